"""Paths as the policy sees them: normalised, refused when unsafe, matched by gitignore globs.

`normalize_path` is the one way a path from a request, a tool or the worktree becomes a
worktree-relative posix path; whatever the policy says it refuses absolute paths, ``..``
that leaves the repository, a ``.git`` component in any case (and its NTFS aliases),
and names with control or invisible characters (`names`). `safe_target` adds what the
filesystem says: no symlinked component on the way, no path the host cannot open.
Globs are compiled once with `pathspec` (`compile_glob`).
"""

from __future__ import annotations

import functools
import os
import re
import stat
from typing import TYPE_CHECKING

from pathspec import GitIgnoreSpec

from agentos_tasks.errors import PolicyViolation
from agentos_tasks.leftovers import host_path_room
from agentos_tasks.policy.names import refused_character

if TYPE_CHECKING:
    from pathlib import Path


MAX_GLOB_CHARS = 512
# each '*' run or '**' segment is a backtracking point of the regex: a path of a few
# thousand characters against k of them costs ~n**k steps (4 took seconds)
MAX_GLOB_WILDCARDS = 3


STAR = "*"


def _tokens(segment: str) -> list[str]:
    """A glob segment as tokens: an escape pair ('\\x') is one token, a char another."""
    tokens: list[str] = []
    index = 0
    while index < len(segment):
        size = 2 if segment[index] == "\\" and index + 1 < len(segment) else 1
        tokens.append(segment[index:index + size])
        index += size
    return tokens


def collapse_stars(glob: str) -> str:
    """The same glob (as pathspec matches it) with no redundant wildcard: a run of '*'
    inside a segment is one '*' (a segment of three or more stars, too: pathspec reads
    it as one-segment stars); consecutive '**' segments are one. An escaped star
    ('\\*') is a literal and stays."""
    segments: list[str] = []
    for raw in glob.split("/"):
        segment = raw
        if raw != "**":
            out: list[str] = []
            for piece in _tokens(raw):
                if not (piece == STAR and out and out[-1] == STAR):
                    out.append(piece)
            segment = "".join(out)
        if not (segment == "**" and segments and segments[-1] == "**"):
            segments.append(segment)
    return "/".join(segments)


def _wildcards(glob: str) -> int:
    """Backtracking points: unescaped '*' runs ('**' segments included); a trailing '/**'
    (compiled to a plain '/') is none."""
    body = glob[:-3] if glob.endswith("/**") else glob
    count = 0
    for segment in body.split("/"):
        previous = ""
        for piece in _tokens(segment):
            count += piece == STAR and previous != STAR
            previous = piece
    return count


@functools.lru_cache(maxsize=4096)
def compile_glob(glob: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    """Compile one gitignore glob to a regex; ValueError says why a glob is unusable.

    Bounded (a hostile policy must not make matching exponential): at most
    MAX_GLOB_CHARS characters and MAX_GLOB_WILDCARDS wildcards once redundant stars
    are collapsed (`collapse_stars`)."""
    if "\0" in glob or "\n" in glob or "\r" in glob:
        raise ValueError(f"glob {glob!r} contains a control character")
    if len(glob) > MAX_GLOB_CHARS:
        raise ValueError(f"glob {glob[:40]!r}... is {len(glob)} characters long (at most "
                         f"{MAX_GLOB_CHARS})")
    glob = collapse_stars(glob)
    if _wildcards(glob) > MAX_GLOB_WILDCARDS:
        raise ValueError(f"glob {glob[:80]!r} has {_wildcards(glob)} wildcards (at most "
                         f"{MAX_GLOB_WILDCARDS}: each multiplies the cost of matching a "
                         "long path); split it into several globs")
    if glob.startswith("!"):
        raise ValueError(f"negated glob {glob!r} is not supported (use a deny rule)")
    if glob.startswith("#"):
        raise ValueError(f"glob {glob!r} is a .gitignore comment (escape it as '\\#')")
    if ".." in glob.strip("/").split("/"):
        raise ValueError(f"glob {glob!r} has a '..' segment; globs are relative to the "
                         "repository root and never leave it")
    try:
        patterns = GitIgnoreSpec.from_lines([glob]).patterns
    except Exception as exc:  # pathspec raises its own error types per version
        raise ValueError(f"invalid glob {glob!r}: {exc}") from None
    if len(patterns) != 1 or patterns[0].include is not True or patterns[0].regex is None:
        raise ValueError(f"glob {glob!r} matches nothing")
    source: str = patterns[0].regex.pattern
    return re.compile(source, re.IGNORECASE if ignore_case else 0)


def is_git_component(component: str) -> bool:
    """`.git` as git itself refuses it: any case, NTFS trailing dots/spaces, 8.3 alias."""
    lowered = component.lower()
    return lowered.rstrip(". ") == ".git" or lowered == "git~1"


def normalize_path(raw: str) -> str:
    """Worktree-relative posix path with '.', '' and inner '..' resolved; refuses escapes.

    Raises PolicyViolation: ``paths.absolute`` (leading '/'), ``paths.parent`` ('..' that
    leaves the root), ``paths.git`` (a '.git' component anywhere), ``paths.invalid`` (empty,
    NUL or other C0 control characters, DEL, backslashes, or the root itself),
    ``paths.name`` (C1 controls, bidi and other invisible format characters: `names`).
    """
    if not isinstance(raw, str) or not raw:
        raise PolicyViolation("paths.invalid", f"empty or non-text path {raw!r}")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in raw):
        raise PolicyViolation("paths.invalid", f"control character in path {raw!r}")
    if any(0xDC80 <= ord(char) <= 0xDCFF for char in raw):
        # bytes that are not UTF-8 (decoded with surrogateescape): refuse, they cannot be
        # recorded faithfully in JSON evidence or SHA256SUMS
        raise PolicyViolation("paths.invalid", f"path is not valid UTF-8: {raw!r}")
    refused = refused_character(raw)
    if refused is not None:
        raise PolicyViolation("paths.name", f"{refused} in path {raw!a}",
                              hint="names with control, bidi or invisible characters do not "
                                   "show as what they are; rename the file")
    if "\\" in raw:
        # Legal in a Linux file name, but a separator elsewhere ('..\\x'); never ambiguous here.
        raise PolicyViolation("paths.invalid", f"backslash in path {raw!r}",
                              hint="use '/' as the path separator")
    if raw.startswith("/"):
        raise PolicyViolation("paths.absolute", f"absolute path {raw!r}",
                              hint="paths are relative to the repository root")
    parts: list[str] = []
    for component in raw.split("/"):
        if component in ("", "."):
            continue
        if component == "..":
            if not parts:
                raise PolicyViolation("paths.parent", f"path {raw!r} leaves the repository")
            parts.pop()
            continue
        if is_git_component(component):
            raise PolicyViolation("paths.git", f"path {raw!r} is inside .git",
                                  hint=".git is never writable, whatever the policy says")
        parts.append(component)
    if not parts:
        raise PolicyViolation("paths.invalid", f"path {raw!r} names the repository root")
    return "/".join(parts)


def refuse_symlinked_parents(root: Path, normal: str, *, include_leaf: bool = False) -> None:
    """PolicyViolation (``paths.symlink``) if a component of `normal` below `root` that
    exists is a symlink: its parents, and with `include_leaf` the path itself."""
    parts = normal.split("/")
    upto = len(parts) if include_leaf else len(parts) - 1
    current = root
    for component in parts[:upto]:
        current = current / component
        try:
            info = current.lstat()
        except FileNotFoundError:
            return  # nothing below a missing component exists either
        if stat.S_ISLNK(info.st_mode):
            raise PolicyViolation("paths.symlink", f"{current.relative_to(root)} is a symlink "
                                  f"on the way to {normal}")


def safe_target(worktree: Path, relpath: str) -> Path:
    """Absolute path to write or delete `relpath` at, refusing any symlinked component.

    Normalises first (PolicyViolation as in `normalize_path`), then refuses
    (``paths.symlink``) if any existing component inside the worktree, the last one
    included, is a symlink: writing through one could land outside the worktree; and
    (``limits.path_length``) a path the host could not open, longer than PATH_MAX.
    """
    normal = normalize_path(relpath)
    path_max, room = host_path_room(worktree)
    if len(os.fsencode(normal)) > room:
        raise PolicyViolation("limits.path_length", f"a {len(os.fsencode(normal))}-byte path "
                              f"is longer than the host can open here ({room} bytes: "
                              f"PATH_MAX={path_max} less the worktree's own path)")
    refuse_symlinked_parents(worktree, normal, include_leaf=True)
    return worktree / normal


__all__ = ["collapse_stars", "compile_glob", "is_git_component", "normalize_path",
           "refuse_symlinked_parents", "safe_target"]
