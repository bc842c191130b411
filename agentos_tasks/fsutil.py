"""File I/O of artifacts.

Writes are durable: artifacts are replaced atomically and fsync'd, so after a crash a
file is either the old version or the new one, never half of each.

Reads of a run directory someone else may have prepared (`agentos verify`, `doit gates
run=...`, `agentos tool verify`, the report) go through ONE bounded reader,
`read_regular` / `sha256_regular`: it never follows a symlink, never blocks on a FIFO
(O_NONBLOCK, then fstat must say regular file) and refuses files over a size bound. The
entry points first refuse the whole directory with `check_received_tree` when it holds
anything but directories and regular files (its git worktree aside), naming the entries.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import time
from typing import TYPE_CHECKING, Any

from agentos_tasks.errors import EXIT_GATES, AgentosError

if TYPE_CHECKING:
    from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Write `data` to `path` via a temp file + rename: readers and a crashed process see
    the old or the new bytes, never a mix. `durable` adds fsync of the file and directory
    (power loss); git's own objects are not fsync'd by default, so per-step artifacts use
    the rename alone and only the final records and the tape pay for fsync."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def canonical_json(obj: Any) -> bytes:
    """Stable JSON bytes (sorted keys, 2-space indent, trailing newline) for artifacts."""
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return text.encode("utf-8", "backslashreplace")  # non-UTF-8 names: JSON \udcXX escapes


def write_json(path: Path, obj: Any, *, durable: bool = False) -> None:
    atomic_write(path, canonical_json(obj), durable=durable)


def write_if_changed(path: Path, data: bytes) -> bool:
    """Rewrite only when the bytes differ, so doit's file_dep sees no change otherwise."""
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    atomic_write(path, data)
    return True


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_json(path: Path) -> Any:
    """A JSON artifact, read with `read_regular` (RefusedFile for a symlink or FIFO)."""
    return json.loads(read_regular(path).decode("utf-8"))


# ------------------------------------------------------------------ reading received files
#
# Any entry of a run directory received from someone else can be a FIFO (a plain open()
# blocks forever), a socket, a device, or a symlink to /etc/shadow or to a FIFO elsewhere.

READ_LIMIT = 256 << 20  # bytes; no artifact of a run comes near this
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_NOT_EVIDENCE = ("worktree",)  # top-level entries a received-tree check does not look into


class RefusedFile(AgentosError):
    """A path that must be a regular file is not one, or is too large to read."""

    def __init__(self, message: str, *, path: Path | str, where: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, where=where, code=EXIT_GATES,
                         hint=hint or "evidence must be plain files inside the run "
                                      "directory: a FIFO blocks a reader, a symlink can "
                                      "point anywhere")
        self.path = str(path)


def file_kind(mode: int) -> str:
    """A file type as a reviewer reads it: "FIFO", "symlink", "socket", ..."""
    kinds = ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "directory"),
             (stat.S_ISLNK, "symlink"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
             (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))
    for test, kind in kinds:
        if test(mode):
            return kind
    return "special file"


def not_regular(path: Path | str, kind: str) -> RefusedFile:
    """The refusal of `path`, which is a `kind` (see file_kind)."""
    return RefusedFile(f"{path} is a {kind}, not a regular file; refusing to read it",
                       path=path)


def _replaced(path: Path | str) -> RefusedFile:
    return RefusedFile(f"{path} was replaced while it was opened, not a regular file any "
                       "more; refusing to read it", path=path)


def open_regular(path: Path | str) -> int:
    """A read-only fd of the regular file `path` (the caller closes it).

    lstat first: a symlink, FIFO, socket or device is refused without being opened (opening
    a device can have effects of its own). Then the open never follows a symlink
    (O_NOFOLLOW) and never waits (O_NONBLOCK: a FIFO swapped in meanwhile does not block
    for a writer), and fstat must show the same regular file. Raises FileNotFoundError when
    absent, RefusedFile for anything but a regular file, OSError otherwise.
    """
    info = os.lstat(path)
    if not stat.S_ISREG(info.st_mode):
        raise not_regular(path, file_kind(info.st_mode))
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EOPNOTSUPP, errno.EISDIR):
            raise _replaced(path) from None
        raise
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise not_regular(path, file_kind(opened.st_mode))
        if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
            raise _replaced(path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: Path | str, *, limit: int = READ_LIMIT) -> bytes:
    """The bytes of the regular file `path`, at most `limit` (RefusedFile beyond that).

    The one bounded reader for files someone else may have put there: no symlink is
    followed, a FIFO, socket or device is refused instead of blocking the process.
    Raises FileNotFoundError when absent, RefusedFile, or OSError.
    """
    fd = open_regular(path)
    try:
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise RefusedFile(f"{path} is larger than {limit} bytes; refusing to read it",
                                  path=path)
        return b"".join(chunks)
    finally:
        os.close(fd)


def sha256_regular(path: Path | str) -> str:
    """sha256 of the regular file `path`, opened like `read_regular` (streamed)."""
    fd = open_regular(path)
    digest = hashlib.sha256()
    try:
        while block := os.read(fd, 1 << 20):
            digest.update(block)
    finally:
        os.close(fd)
    return digest.hexdigest()


def refuse_special(path: Path | str) -> None:
    """RefusedFile when `path` exists as anything but a regular file (lstat: a symlink is
    refused, not followed); nothing when it is a regular file or absent."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise not_regular(path, file_kind(mode))


def is_regular(path: Path | str) -> bool:
    """True when `path` itself (never a symlink's target) is a regular file."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


# Scans of a tree, kept per process while none of its directories changed: adding,
# removing or renaming an entry updates its directory's mtime and ctime (ctime cannot be
# set back). Like git's "racy" index entries, a scan of a directory changed within the
# last seconds is not kept: a change in the same clock tick would leave the stamp as it was.
_Stamp = tuple[str, int, int, int]
_SCANS: dict[str, tuple[tuple[_Stamp, ...], tuple[tuple[str, str], ...]]] = {}
_RACY_NS = 3_000_000_000


def _stamp(path: str, info: os.stat_result) -> _Stamp:
    return (path, info.st_ino, info.st_mtime_ns, info.st_ctime_ns)


def _stamps_hold(stamps: tuple[_Stamp, ...]) -> bool:
    for path, ino, mtime, ctime in stamps:
        try:
            info = os.lstat(path)
        except OSError:
            return False
        if not stat.S_ISDIR(info.st_mode) or _stamp(path, info) != (path, ino, mtime, ctime):
            return False
    return True


def _scan(root: str) -> tuple[list[tuple[str, str]], list[_Stamp]]:
    found: list[tuple[str, str]] = []
    stamps: list[_Stamp] = []
    pending: list[tuple[str, str]] = [(root, "")]
    while pending:
        directory, prefix = pending.pop()
        try:
            info = os.lstat(directory)  # before listing: a change while listing shows
            if not stat.S_ISDIR(info.st_mode):
                continue
            stamps.append(_stamp(directory, info))
            with os.scandir(directory) as entries:
                listed = list(entries)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in listed:
            if not prefix and entry.name in _NOT_EVIDENCE:
                continue
            rel = prefix + entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append((entry.path, rel + "/"))
                elif not entry.is_file(follow_symlinks=False):
                    found.append((rel, file_kind(entry.stat(follow_symlinks=False).st_mode)))
            except FileNotFoundError:
                continue
    return sorted(found), stamps


def special_files(root: Path) -> list[tuple[str, str]]:
    """(root-relative path, kind) of every entry below `root` that is neither a directory
    nor a regular file: symlinks, FIFOs, sockets, devices. Nothing is followed or opened;
    the run's git worktree (top-level `worktree/`) is not looked into. A repeated call
    costs one lstat per directory while the tree's directories are unchanged."""
    key = os.path.abspath(root)
    cached = _SCANS.get(key)
    if cached is not None and _stamps_hold(cached[0]):
        return list(cached[1])
    started = time.time_ns()
    found, stamps = _scan(key)
    if all(max(mtime, ctime) < started - _RACY_NS for _, _, mtime, ctime in stamps):
        _SCANS[key] = (tuple(stamps), tuple(found))
    else:
        _SCANS.pop(key, None)
    return found


def check_received_tree(root: Path) -> None:
    """Refuse a run directory that holds anything but directories and regular files (its
    worktree aside): one RefusedFile naming the entries. A FIFO would block a reader for
    ever; a symlink could make it read /etc/shadow or a FIFO elsewhere."""
    found = special_files(root)
    if not found:
        return
    named = "; ".join(f"{rel} is a {kind}, not a regular file" for rel, kind in found[:5])
    more = f" (and {len(found) - 5} more)" if len(found) > 5 else ""
    raise RefusedFile(f"{named}{more}: refusing to read the run directory", path=root / found[0][0],
                      where=str(root))
