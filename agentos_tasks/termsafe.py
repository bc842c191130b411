"""Text a step, a tool or a repository chose, made safe to print on a terminal.

Error messages, gate reasons, file names, verification details and output excerpts can
carry whatever an agent or a hostile run directory put there: ESC sequences that erase
lines or move the cursor (a fake "all good"), OSC 52 (writes the clipboard), OSC 8 links,
`\\r` overprinting, C1 controls (U+009B is a one-byte CSI on some terminals), bidi
overrides that reorder what a reviewer reads (U+202E) and invisible characters.

`escape` is the one function every printing boundary uses (the CLI's error block and
output, the doit reporter, the gate table, `agentos verify`, `agentos tool verify`).
It escapes rather than drops, so a reviewer sees that something odd was there:
ESC becomes the four characters `\\x1b`, U+202E becomes `\\u202e`, CR becomes `\\r`.

Escaped are every character of Unicode category Cc (C0, DEL, C1), Cf (format: bidi
embeddings, overrides and isolates, zero-width characters, BOM, soft hyphen, tags), Cs
(lone surrogates from undecodable file names), Zl and Zp (U+2028, U+2029). `\\n` and `\\t`
stay only in `multiline` text (a block that is meant to have lines); in a single-line
field (a file name, a reason, a location) they are escaped too, so a value cannot start a
forged line of its own.

Backslashes are left alone, so escaping is idempotent: escaping already escaped text
changes nothing, and each boundary may escape again without garbling it.

`markup` additionally neutralises rich console markup (`[bold red]`, `[link=...]`) for
strings that are printed through rich as markup; prefer `rich.text.Text(escape(s))`.
"""

from __future__ import annotations

import re
import unicodedata

_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

# Candidates: anything outside printable ASCII. The callback keeps what is harmless.
_CANDIDATES = re.compile(r"[^\x20-\x7e]")


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(char: str, keep: str) -> str:
    if char in keep:
        return char
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    if code < 0x80 or unicodedata.category(char) in _ESCAPED_CATEGORIES:
        if code <= 0xFF:
            return f"\\x{code:02x}"
        if code <= 0xFFFF:
            return f"\\u{code:04x}"
        return f"\\U{code:08x}"
    return char


def escape(text: object, *, multiline: bool = False) -> str:
    """`text` with every control, format (bidi, invisible) and line/paragraph separator
    character shown as a visible escape (`\\x1b`, `\\u202e`, `\\U000e0041`).

    `multiline` keeps `\\n` and `\\t` (a block with intended lines); otherwise they are
    escaped as well. Non-str values are converted with str() first.
    """
    value = text if isinstance(text, str) else str(text)
    if value.isascii() and value.isprintable():
        return value  # the common case: nothing to look at
    keep = "\n\t" if multiline else ""
    return _CANDIDATES.sub(lambda match: _escaped(match.group(), keep), value)


def markup(text: object, *, multiline: bool = False) -> str:
    """`escape` plus rich markup escaping, for text interpolated into a rich markup string
    (then `[bold red]` prints literally instead of styling, `[link=...]` makes no link)."""
    from rich.markup import escape as rich_escape

    return rich_escape(escape(text, multiline=multiline))


def is_clean(text: str, *, multiline: bool = False) -> bool:
    """True when `escape` would leave `text` unchanged."""
    return escape(text, multiline=multiline) == text


__all__ = ["escape", "is_clean", "markup"]
