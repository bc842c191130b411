"""Characters a path may not carry (rule ``paths.name``), whatever the policy says.

A name is what a reviewer reads in a diff, a terminal, a web UI. Characters that do not
show as themselves make a file look like another one: a bidi override reorders what
follows it (``docs/<U+202E>dm.exe`` reads as ``docs/exe.md``), a zero-width space or a
byte order mark makes two different names look equal, a C1 control (U+009B is a one-byte
CSI on some terminals) or a line separator rewrites what is printed after it.

Refused: every character of Unicode category Cc (C0, DEL, C1), Cf (format: bidi
embeddings, overrides, isolates and marks, zero-width spaces and joiners, the word joiner
and invisible operators, BOM, soft hyphen, tags, interlinear annotations), Zl and Zp
(U+2028, U+2029), and a few letters that render as nothing (Hangul fillers, the combining
grapheme joiner, Khmer inherent vowels). `normalize_path` refuses C0 and DEL first, as
``paths.invalid``, as it always has; everything else here is ``paths.name``.
"""

from __future__ import annotations

import unicodedata

REFUSED_CATEGORIES: frozenset[str] = frozenset({"Cc", "Cf", "Zl", "Zp"})
INVISIBLE_LETTERS: frozenset[int] = frozenset({
    0x034F,  # COMBINING GRAPHEME JOINER
    0x115F, 0x1160,  # HANGUL CHOSEONG / JUNGSEONG FILLER
    0x17B4, 0x17B5,  # KHMER VOWEL INHERENT AQ / AA
    0x3164,  # HANGUL FILLER
    0xFFA0,  # HALFWIDTH HANGUL FILLER
})


def describe(char: str) -> str:
    """``U+202E RIGHT-TO-LEFT OVERRIDE``: a character named without printing it."""
    return f"U+{ord(char):04X} {unicodedata.name(char, '<control>')}"


def refused_character(text: str) -> str | None:
    """The first character of `text` a name may not carry, described; None when clean."""
    if text.isascii() and text.isprintable():
        return None
    for char in text:
        if unicodedata.category(char) in REFUSED_CATEGORIES or ord(char) in INVISIBLE_LETTERS:
            return describe(char)
    return None


__all__ = ["INVISIBLE_LETTERS", "REFUSED_CATEGORIES", "describe", "refused_character"]
