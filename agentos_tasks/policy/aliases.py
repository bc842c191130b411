"""Which deny/ask globs a symlink to a directory would let through under another name.

A link `docs/s -> ../secrets` aliases every path below `secrets/`: `docs/s/api.key` *is*
`secrets/api.key`. A glob such as ``secrets/**`` denies those paths by the directory's own
name, so the alias dodges it; a glob such as ``**/.env`` does not care where a file sits,
so it denies `docs/s/.env` just as it denies `secrets/.env`.

`reaches_below` tells the two apart without listing anything: it asks whether some path
below the directory matches the glob in an alignment where at least one of the
directory's own segments is matched by a concrete (non-``**``) glob segment. When every
segment of the directory can only be absorbed by a leading ``**``, the same alignment
matches the alias path too, so the link exposes nothing new. The answer errs towards
"reaches" (a deny): a glob whose remaining segments could never match anything is still
taken to match something.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING

from pathspec import GitIgnoreSpec

if TYPE_CHECKING:
    from collections.abc import Sequence

_DOUBLE_STAR = "**"


def glob_segments(glob: str) -> tuple[str, ...]:
    """The glob as path segments, with gitignore's anchoring made explicit: a glob with no
    '/' except a trailing one matches at any depth, i.e. starts with ``**``."""
    body = glob.rstrip("/") or glob  # a trailing '/' (directories only): any entry, here
    anchored = "/" in body
    segments = tuple(part for part in body.lstrip("/").split("/") if part)
    return segments if anchored else (_DOUBLE_STAR, *segments)


@functools.lru_cache(maxsize=4096)
def _segment_regex(segment: str, ignore_case: bool) -> re.Pattern[str] | None:
    try:
        patterns = GitIgnoreSpec.from_lines(["/" + segment]).patterns
    except Exception:  # pathspec raises its own error types per version
        return None
    if len(patterns) != 1 or patterns[0].regex is None:
        return None
    source: str = patterns[0].regex.pattern
    return re.compile(source, re.IGNORECASE if ignore_case else 0)


def _segment_matches(segment: str, name: str, ignore_case: bool) -> bool:
    regex = _segment_regex(segment, ignore_case)
    return True if regex is None else regex.search(name) is not None  # unusable: assume


def reaches_below(glob: str, directory: Sequence[str], *, ignore_case: bool) -> bool:
    """True when `glob` matches the directory, an ancestor of it, or some path below it in
    a way that depends on the directory's own segments (see the module docstring)."""
    pattern = glob_segments(glob)
    end = len(pattern)

    def closure(states: set[tuple[int, bool]]) -> set[tuple[int, bool]]:
        out = set(states)
        todo = list(states)
        while todo:
            index, concrete = todo.pop()
            if index < end and pattern[index] == _DOUBLE_STAR and (index + 1, concrete) not in out:
                out.add((index + 1, concrete))
                todo.append((index + 1, concrete))
        return out

    states: set[tuple[int, bool]] = {(0, False)}
    for name in directory:
        following: set[tuple[int, bool]] = set()
        for index, concrete in closure(states):
            if index == end:
                return True  # the glob matched an ancestor: everything below is covered
            segment = pattern[index]
            if segment == _DOUBLE_STAR:
                following.add((index, concrete))
            elif _segment_matches(segment, name, ignore_case):
                following.add((index + 1, True))
        if not following:
            return False
        states = following
    return any(concrete or index == end for index, concrete in closure(states))


__all__ = ["glob_segments", "reaches_below"]
