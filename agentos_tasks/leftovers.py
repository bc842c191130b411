"""What a run or tool step leaves in its worktree: surveyed once, bounded, made safe.

After every run and tool step, before git looks at the worktree, `survey_step` walks
everything the step left (tracked, untracked and gitignored) exactly once:

- it refuses a worktree-relative path longer than ``limits.path_length`` bytes (or than
  the host can open by absolute path) or deeper than ``limits.path_depth`` levels (and
  removes that subtree, so nothing later trips over it: `git clean` takes a minute for a
  2,000-level tree, and Python's own rmtree recurses per level), more than ``limits.files``
  entries (files, directories, links, other nodes: every inode) and more than
  ``limits.bytes`` bytes (sizes of files and links) beyond what the parent commit's own
  tree holds, and stops at the first limit it exceeds: a step that leaves 200,000 files
  costs the host about ``limits.files`` stat calls, never 200,000;
- it strips setuid/setgid bits (``paths.setuid``: a sandboxed root can chmod 4755 a copy
  of a binary) and removes FIFOs, sockets and device nodes (``paths.special``: a FIFO
  hangs whoever opens it), and the step fails naming them.

The walk never follows a symlink and never builds a path string longer than one name: it
holds one directory fd at a time (openat down, ``..`` up, every step checked against the
device and inode it saw), so a 20 kB nested path costs neither ENAMETOOLONG, nor an fd per
level, nor a recursion level. `clean_worktree`, the reset between steps, falls back to the
same fd-based removal when `git clean` gives up on such a tree, so a failed step never
leaves the run stuck until `doit clean`.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from agentos_tasks.errors import EXIT_STEP, AgentosError, PolicyViolation

if TYPE_CHECKING:
    from pathlib import Path

    from agentos_tasks.git import Git

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SETID = stat.S_ISUID | stat.S_ISGID
_GIT = frozenset({".git"})  # the worktree's own .git file, at the top only

Ident = tuple[int, int]
Visit = Callable[[int, str, str, os.stat_result], bool]
"""visit(dir_fd, rel, name, lstat) -> descend? `name` is valid relative to `dir_fd` only
during the call; `rel` is the worktree-relative path."""


class SurveyLimits(Protocol):
    """The limits the survey enforces: `policy.Limits` has them (and more).

    A protocol, not an import: the policy checks call this module's walk, so this module
    stays below the policy and never imports it.
    """

    @property
    def path_length(self) -> int: ...
    @property
    def path_depth(self) -> int: ...
    @property
    def files(self) -> int: ...
    @property
    def bytes(self) -> int: ...


@dataclass(frozen=True)
class Baseline:
    """What the parent commit's own tree holds: entries (blobs, links, trees) and bytes."""

    entries: int
    bytes: int


@dataclass
class Survey:
    """What the walk counted, and what it defused: (rel, rule_id, what) per entry."""

    entries: int = 0
    bytes: int = 0
    defused: list[tuple[str, str, str]] = field(default_factory=list)


class _Exceeded(Exception):
    def __init__(self, rule_id: str, what: str) -> None:
        super().__init__(what)
        self.rule_id = rule_id
        self.what = what


# --------------------------------------------------------------------------- the walk

def _ident(info: os.stat_result) -> Ident:
    return info.st_dev, info.st_ino


def _open_dir(name: str, dir_fd: int | None, expect: Ident | None) -> int:
    """openat(dir_fd, name) as a directory, never through a symlink, and only if it is
    still the directory (device, inode) that was seen; a step may leave a directory it
    made unreadable (chmod 000): it is made the owner's again first."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        os.chmod(name, stat.S_IRWXU, dir_fd=dir_fd)
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    if expect is not None and _ident(os.fstat(fd)) != expect:
        os.close(fd)
        raise OSError(errno.ESTALE, f"{name!r} changed while it was walked")
    return fd


def _scan(fd: int, rel: str, visit: Visit, skip: frozenset[str]) -> list[tuple[str, Ident]]:
    """Visit every entry of the open directory `fd`; return the subdirectories to enter."""
    subdirs: list[tuple[str, Ident]] = []
    with os.scandir(fd) as entries:
        for entry in entries:
            name = entry.name
            if name in skip:
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if visit(fd, f"{rel}/{name}" if rel else name, name, info) \
                    and stat.S_ISDIR(info.st_mode):
                subdirs.append((name, _ident(info)))
    return subdirs


@dataclass
class _Frame:
    rel: str
    ident: Ident
    subdirs: list[tuple[str, Ident]]


def walk(top: Path, visit: Visit, *, skip_top: frozenset[str] = frozenset()) -> None:
    """Call `visit` for every entry below `top` (depth first, directory order), entering a
    directory when `visit` returns True; names in `skip_top` are not visited at the top.
    One directory fd open at a time; no recursion; symlinks are entries, never followed."""
    fd = _open_dir(os.fspath(top), None, None)
    try:
        frames = [_Frame("", _ident(os.fstat(fd)), [])]
        frames[0].subdirs = _scan(fd, "", visit, skip_top)
        while frames:
            frame = frames[-1]
            if frame.subdirs:
                name, ident = frame.subdirs.pop()
                child = _open_dir(name, fd, ident)
                os.close(fd)
                fd = child
                rel = f"{frame.rel}/{name}" if frame.rel else name
                frames.append(_Frame(rel, ident, []))
                frames[-1].subdirs = _scan(fd, rel, visit, frozenset())
                continue
            frames.pop()
            if frames:
                parent = _open_dir("..", fd, frames[-1].ident)
                os.close(fd)
                fd = parent
    finally:
        os.close(fd)


def _clear(fd: int) -> list[tuple[str, Ident]]:
    """Unlink every non-directory in the open directory `fd`; return its subdirectories."""
    info = os.fstat(fd)
    if info.st_mode & stat.S_IRWXU != stat.S_IRWXU:
        os.fchmod(fd, stat.S_IMODE(info.st_mode) | stat.S_IRWXU)
    subdirs: list[tuple[str, Ident]] = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append((entry.name, _ident(entry.stat(follow_symlinks=False))))
            else:
                os.unlink(entry.name, dir_fd=fd)
    return subdirs


def remove_at(dir_fd: int, name: str) -> None:
    """Remove `name` in the open directory `dir_fd`: a file, a link, or a whole tree of any
    depth (iteratively, one fd at a time; links are removed, never followed)."""
    info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISDIR(info.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    fd = _open_dir(name, dir_fd, _ident(info))
    try:
        frames = [_Frame(name, _ident(info), _clear(fd))]
        while True:
            frame = frames[-1]
            if frame.subdirs:
                sub, ident = frame.subdirs.pop()
                child = _open_dir(sub, fd, ident)
                os.close(fd)
                fd = child
                frames.append(_Frame(sub, ident, _clear(fd)))
                continue
            frames.pop()
            if not frames:
                break
            parent = _open_dir("..", fd, frames[-1].ident)
            os.close(fd)
            fd = parent
            os.rmdir(frame.rel, dir_fd=fd)  # frame.rel holds the name in its parent here
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def remove_tree(path: Path) -> None:
    """`shutil.rmtree` for trees deeper than PATH_MAX or the recursion limit."""
    parent = _open_dir(os.fspath(path.parent), None, None)
    try:
        remove_at(parent, path.name)
    finally:
        os.close(parent)


# --------------------------------------------------------------------------- the survey

def _shown(rel: str) -> str:
    """A path for a one-line message: non-printables escaped, long ones shortened."""
    text = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in rel)
    return text if len(text) <= 120 else f"{text[:80]}...{text[-30:]}"


def host_path_room(worktree: Path) -> tuple[int, int]:
    """(PATH_MAX, the longest worktree-relative path the host can still open by name).

    The executor, git and the policy check open leftovers by absolute path; one longer
    than PATH_MAX is ENAMETOOLONG to all of them, so the survey refuses it first.
    """
    try:
        path_max = os.pathconf(worktree, "PC_PATH_MAX")
    except (OSError, ValueError):
        path_max = 4096
    prefix = max(len(os.fsencode(os.path.abspath(worktree))),
                 len(os.fsencode(os.path.realpath(worktree))))
    return path_max, path_max - prefix - 2  # the '/' between them and the final NUL


def tree_baseline(git: Git, commit: str) -> Baseline:
    """Entries and bytes of `commit`'s tree (one `git ls-tree`; objects only)."""
    out = git.run("ls-tree", "-r", "-t", "-l", "-z", "--full-tree", commit).stdout
    entries = total = 0
    for record in out.split(b"\0"):
        if not record:
            continue
        entries += 1
        size = record.split(b"\t", 1)[0].split()[-1]
        if size.isdigit():
            total += int(size)
    return Baseline(entries, total)


def survey(worktree: Path, limits: SurveyLimits,
           baseline: Baseline | Callable[[], Baseline], *,
           step_id: str = "the step") -> Survey:
    """Walk what a step left (once, bounded); defuse special files; enforce the limits.

    `baseline` (or a function computing it, called only when the bare limits are
    exceeded, so the common small step costs no git call) is what the parent holds.

    Raises PolicyViolation (``limits.path_length``, ``limits.path_depth``, ``limits.files``,
    ``limits.bytes``)
    at the first limit exceeded, after locking the worktree to its owner (0700): the walk
    stopped, so bits it did not reach may still be set. Special files it defused are
    returned in `Survey.defused` for the caller to fail the step with.
    """
    found = Survey()
    beyond = "beyond what its parent commit holds"
    path_max, room = host_path_room(worktree)
    path_limit = min(limits.path_length, room)
    bound = f"limits.path_length={limits.path_length} bytes" if path_limit == limits.path_length \
        else f"{room} bytes here (limits.path_length={limits.path_length}, but the host's " \
             f"paths end at PATH_MAX={path_max} and the worktree's own path takes the rest)"
    parent: list[Baseline] = [baseline] if isinstance(baseline, Baseline) else []

    def held() -> Baseline:
        if not parent:
            parent.append(baseline if isinstance(baseline, Baseline) else baseline())
        return parent[0]

    def visit(dir_fd: int, rel: str, name: str, info: os.stat_result) -> bool:
        found.entries += 1
        if found.entries > limits.files and found.entries > limits.files + held().entries:
            raise _Exceeded("limits.files", f"step {step_id} left more than {limits.files} "
                            f"entries (files, directories, links) {beyond} "
                            f"({held().entries}); counting stopped there")
        depth = rel.count("/") + 1
        if depth > limits.path_depth:
            remove_at(dir_fd, name)  # git clean slows down with the cube of the depth
            raise _Exceeded("limits.path_depth", f"step {step_id} left a path deeper than "
                            f"limits.path_depth={limits.path_depth} levels: {_shown(rel)} "
                            "(removed)")
        length = len(os.fsencode(rel))
        if length > path_limit:
            remove_at(dir_fd, name)  # nothing deeper is walked, and the tree stays cleanable
            raise _Exceeded("limits.path_length", f"step {step_id} left a path longer than "
                            f"{bound}: {_shown(rel)} ({length} bytes; removed)")
        mode = info.st_mode
        if stat.S_ISDIR(mode):
            return True
        if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
            found.bytes += info.st_size
            if found.bytes > limits.bytes and found.bytes > limits.bytes + held().bytes:
                raise _Exceeded("limits.bytes", f"step {step_id} left more than "
                                f"{limits.bytes} bytes {beyond} ({held().bytes}); "
                                f"counting stopped at {_shown(rel)}")
            if stat.S_ISREG(mode) and mode & _SETID:
                os.chmod(name, stat.S_IMODE(mode) & ~_SETID, dir_fd=dir_fd)
                found.defused.append((rel, "paths.setuid", "a setuid/setgid file"))
            return False
        os.unlink(name, dir_fd=dir_fd)
        found.defused.append((rel, "paths.special", "a FIFO, socket or device node"))
        return False

    try:
        walk(worktree, visit, skip_top=_GIT)
    except _Exceeded as exc:
        try:
            os.chmod(worktree, stat.S_IRWXU)
        except OSError:
            pass
        limit = exc.rule_id.split(".", 1)[1]
        raise PolicyViolation(exc.rule_id, exc.what,
                              hint=f"raise limits.{limit} in the policy if the step really "
                                   "needs it; the next `doit run` resumes at this step from "
                                   "a clean checkout") from None
    except OSError as exc:
        raise AgentosError(f"step {step_id}: cannot survey what it left in {worktree}: "
                           f"{exc}", code=EXIT_STEP) from None
    return found


def survey_step(worktree: Path, limits: SurveyLimits, git: Git, parent: str,
                step_id: str) -> Survey:
    """The executor's call after a run/tool step: survey against the parent's tree, and
    fail the step (first defused file named) when anything had to be defused."""
    found = survey(worktree, limits, lambda: tree_baseline(git, parent), step_id=step_id)
    if found.defused:
        rel, rule, what = found.defused[0]
        raise PolicyViolation(rule, f"step {step_id} left {what} {_shown(rel)} (defused; "
                              f"{len(found.defused)} such file(s))")
    return found


# --------------------------------------------------------------------------- cleaning

def clean_worktree(git: Git, worktree: Path) -> None:
    """``git clean -ffdxq``; when git gives up (a path beyond PATH_MAX, a directory it
    cannot open) remove everything the index does not track with fds, then let git
    confirm. Call after ``git reset --hard``, so the index is the parent's tree."""
    if git.run("clean", "-ffdxq", check=False).returncode == 0:
        return
    tracked: set[str] = set()
    parents: set[str] = set()
    for raw in git.run("ls-files", "-z", "--cached").stdout.split(b"\0"):
        if raw:
            path = os.fsdecode(raw)
            tracked.add(path)
            parts = path.split("/")
            parents.update("/".join(parts[:end]) for end in range(1, len(parts)))

    def visit(dir_fd: int, rel: str, name: str, info: os.stat_result) -> bool:
        if rel in tracked:
            return False
        if rel in parents:
            return stat.S_ISDIR(info.st_mode)
        remove_at(dir_fd, name)
        return False

    try:
        walk(worktree, visit, skip_top=_GIT)
    except OSError as exc:
        raise AgentosError(f"cannot clean the worktree {worktree}: {exc}", code=EXIT_STEP,
                           hint="remove it with `doit clean request=...` and run again") from None
    git.run("clean", "-ffdxq")


__all__ = ["Baseline", "Survey", "SurveyLimits", "clean_worktree", "host_path_room",
           "remove_at", "remove_tree", "survey", "survey_step", "tree_baseline", "walk"]
