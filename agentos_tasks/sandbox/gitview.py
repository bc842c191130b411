"""The repository's git dir, as a step may see it.

Of the git dir only what git needs to read it from a linked worktree (objects, refs,
HEAD, info, this worktree's own dir) with a synthesized `config` holding the repository
format. The real config (credential helpers, http.<url>.extraheader, remote URLs), hooks,
logs, FETCH_HEAD and the worktrees of other runs stay on the host. bwrap.py turns a
GitDirView into mounts: a read-only tmpfs over the git dir holding only these entries.

Pure functions of the host filesystem: nothing is started, no git is run (the config is
read by a small reader here, not by `git config`).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agentos_tasks.sandbox.hostfs import read_head

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

# What git needs to read a repository from a linked worktree (status, log, diff). Never
# `config` (credential helpers, http.<url>.extraheader, https://user:token@ remotes), nor
# hooks/, logs/, FETCH_HEAD (remote URLs), modules/ or worktrees of other runs.
GIT_COMMON_ENTRIES: tuple[str, ...] = ("HEAD", "objects", "refs", "packed-refs", "reftable",
                                       "info", "shallow")
# Of the worktree's own dir (`<common>/worktrees/<name>`): no config.worktree, no logs/.
GIT_WORKTREE_ENTRIES: tuple[str, ...] = ("HEAD", "commondir", "gitdir", "index", "refs",
                                         "info")
# core.* keys copied from the real config: they change how the worktree is compared
# (never a command, a path or a URL, and only values that look like a word).
GIT_CORE_KEYS: tuple[str, ...] = ("repositoryformatversion", "filemode", "symlinks",
                                  "ignorecase", "precomposeunicode", "checkstat", "trustctime",
                                  "autocrlf", "eol")
# extensions.* are copied (objectformat, refstorage, ...) except this one, which would make
# git read config.worktree: that file is not shown either.
GIT_EXTENSIONS_DROPPED: tuple[str, ...] = ("worktreeconfig",)
_GIT_POINTER_MAX = 4096
_CONFIG_MAX_BYTES = 1 << 20
_CONFIG_SECTION = re.compile(r'\s*\[\s*([A-Za-z0-9.-]+)\s*("(?:[^"\\]|\\.)*")?\s*\](.*)')
_CONFIG_ENTRY = re.compile(r"\s*([A-Za-z][A-Za-z0-9-]*)\s*(?:=(.*))?")
_CONFIG_SAFE_VALUE = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class GitDirView:
    """The part of a repository's git dir that is bound into the sandbox.

    Inside, `gitdir` is a read-only tmpfs holding only `binds` (host files and dirs bound
    at the same path, never through a symlink), `symlinks` (recreated as they are, so they
    resolve inside the sandbox) and a synthesized `config` (see `git_view_config`).
    """

    gitdir: str
    binds: tuple[str, ...]
    symlinks: tuple[tuple[str, str], ...]  # (link target, path)

    @property
    def config_path(self) -> str:
        return os.path.join(self.gitdir, "config")


def is_git_dir(path: str) -> bool:
    """A repository's (common) git dir: a real directory holding HEAD and objects."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return False
    except OSError:
        return False
    return all(os.path.lexists(os.path.join(path, name)) for name in ("HEAD", "objects"))


def _git_pointer(path: str) -> str | None:
    """The dir a `.git` file points to (`gitdir: <dir>`), normalised; None otherwise."""
    head = read_head(path, _GIT_POINTER_MAX)
    if not head.startswith(b"gitdir: "):
        return None
    target = head[len(b"gitdir: "):].split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    if not target or "\x00" in target:
        return None
    return os.path.normpath(os.path.join(os.path.dirname(path), target))


def _entries_of(directory: str, names: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Which of `names` in `directory` to bind (real files and dirs) or recreate (links)."""
    binds: list[str] = []
    links: list[tuple[str, str]] = []
    for name in names:
        entry = os.path.join(directory, name)
        try:
            mode = os.lstat(entry).st_mode
        except OSError:
            continue
        if stat.S_ISLNK(mode):
            links.append((os.readlink(entry), entry))  # resolved inside the sandbox only
        elif stat.S_ISDIR(mode) or stat.S_ISREG(mode):
            binds.append(entry)  # FIFOs, sockets, devices: never
    return binds, links


def git_dir_view(gitdir: str, pointers: Iterable[str] = ()) -> GitDirView:
    """The view of `gitdir` for a step: what git needs, plus the worktree dirs that the
    worktree `.git` files in `pointers` name (`<gitdir>/worktrees/<name>`), nothing else."""
    gitdir = os.path.normpath(gitdir)
    pointers = list(pointers)
    # a worktree whose `.git` names this dir itself (the run's private git dir) also
    # needs its index
    names = (*GIT_COMMON_ENTRIES, "index") if gitdir in pointers else GIT_COMMON_ENTRIES
    binds, links = _entries_of(gitdir, names)
    worktrees = os.path.join(gitdir, "worktrees")
    for pointer in pointers:
        name = os.path.basename(pointer)
        if os.path.dirname(pointer) != worktrees or name in ("", ".", ".."):
            continue
        try:
            if not stat.S_ISDIR(os.lstat(worktrees).st_mode) or \
                    not stat.S_ISDIR(os.lstat(pointer).st_mode):
                continue  # a symlinked worktrees/ or worktrees/<name> would lead elsewhere
        except OSError:
            continue
        more_binds, more_links = _entries_of(pointer, GIT_WORKTREE_ENTRIES)
        binds += more_binds
        links += more_links
    return GitDirView(gitdir, tuple(binds), tuple(links))


def _config_value(raw: str) -> str | None:
    value = re.split(r"[#;]", raw, maxsplit=1)[0].strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value if _CONFIG_SAFE_VALUE.fullmatch(value) else None


def read_repository_format(config_path: str) -> tuple[dict[str, str], dict[str, str]]:
    """(core.* keys of GIT_CORE_KEYS, extensions.*) of a git config file, lower-cased keys.

    A small reader, no process: `[section]` / `[section "sub"]` headers, `key = value`
    lines, comments; includes are not followed (git does not follow them for
    repositoryformatversion and extensions either). Only word-like values are kept.
    """
    core: dict[str, str] = {}
    extensions: dict[str, str] = {}
    head = read_head(config_path, _CONFIG_MAX_BYTES)
    section: dict[str, str] | None = None
    for line in head.decode("utf-8", "replace").splitlines():
        rest = line
        header = _CONFIG_SECTION.match(line)
        if header is not None:
            name = header.group(1).lower()
            section = None if header.group(2) is not None else \
                {"core": core, "extensions": extensions}.get(name)
            rest = header.group(3)
        entry = _CONFIG_ENTRY.fullmatch(rest.rstrip())
        if section is None or entry is None:
            continue
        key = entry.group(1).lower()
        value = _config_value(entry.group(2)) if entry.group(2) is not None else "true"
        if value is not None and (section is extensions or key in GIT_CORE_KEYS):
            section[key] = value
    return core, extensions


def git_view_config(gitdir: str) -> bytes:
    """The `config` a step sees in place of the real one: the repository format only.

    git needs repositoryformatversion and the extensions (sha256 objects, reftable) to
    read the repository; everything else in the real config (remotes, credentials,
    extraheaders, aliases, filters) is left out.
    """
    core, extensions = read_repository_format(os.path.join(gitdir, "config"))
    lines = ["[core]", f"\trepositoryformatversion = {core.pop('repositoryformatversion', '0')}"]
    lines += [f"\t{key} = {value}" for key, value in sorted(core.items())]
    lines.append("\tbare = false")
    kept = {k: v for k, v in extensions.items() if k not in GIT_EXTENSIONS_DROPPED}
    if kept:
        lines.append("[extensions]")
        lines += [f"\t{key} = {value}" for key, value in sorted(kept.items())]
    return ("\n".join(lines) + "\n").encode()


def readonly_mounts(readonly_paths: Iterable[Path | str]) -> list[str | GitDirView]:
    """How each read-only path is shown, parents before children: a path (bound as is)
    or a GitDirView (a repository's git dir, shown without its config and hooks)."""
    paths = sorted(dict.fromkeys(os.path.abspath(p) for p in readonly_paths), key=len)
    pointers = [target for p in paths
                if os.path.basename(p) == ".git" and os.path.isfile(p)
                and (target := _git_pointer(p)) is not None]
    mounts: list[str | GitDirView] = []
    for path in paths:
        if not os.path.lexists(path):
            continue
        mounts.append(git_dir_view(path, pointers) if is_git_dir(path) else path)
    return mounts


