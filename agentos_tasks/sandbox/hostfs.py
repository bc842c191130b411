"""The host filesystem as the sandbox sees it: which paths are system dirs (visible
read-only anyway), which are the host's pseudo filesystems (never shown), which lie in a
home directory (private), where PATH finds a program, and the one head reader for host
and worktree files.

Pure functions of the host filesystem: nothing is started, nothing is written.
"""

from __future__ import annotations

import contextlib
import os
import pwd
from pathlib import Path
from typing import TYPE_CHECKING

from agentos_tasks import fsutil

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

# Read-only system trees. On merged-/usr systems /bin, /lib ... are symlinks into /usr and
# are recreated as symlinks inside the sandbox.
SYSTEM_DIRS: tuple[str, ...] = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# The sandbox's own pseudo filesystems (it mounts a private /proc and /dev, and no /sys):
# nothing at or below them is ever bound from the host, and a program there is not run.
PSEUDO_FS: tuple[str, ...] = ("/proc", "/sys", "/dev")
# Where home directories live besides $HOME (another user's home is private too).
HOME_ROOTS: tuple[str, ...] = ("/home", "/var/home")


def within(path: str, root: str) -> bool:
    """`path` is `root` or lies below it (both normalised, compared as strings)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def resolve_on_path(name: str, path_env: str, *, skip_dirs: Iterable[str] = ()) -> Path | None:
    """First executable regular file called `name` on `path_env` (like execvp would find)."""
    skipped = {os.path.normpath(d) for d in skip_dirs}
    for entry in path_env.split(os.pathsep):
        if not entry or not os.path.isabs(entry) or os.path.normpath(entry) in skipped:
            continue  # relative PATH entries would depend on the cwd: ignore them
        candidate = os.path.join(entry, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def is_system_path(path: Path | str) -> bool:
    """True when `path` (symlinks resolved) lies inside a read-only system dir."""
    real = os.path.realpath(path)
    for system_dir in SYSTEM_DIRS:
        if os.path.lexists(system_dir):
            root = os.path.realpath(system_dir)
            if real == root or real.startswith(root.rstrip("/") + "/"):
                return True
    return False


def lexically_system(path: str) -> bool:
    """True when the path as written (normalised, links not followed) is in a system dir."""
    normal = os.path.normpath(path)
    return any(within(normal, system_dir) for system_dir in SYSTEM_DIRS)


def in_pseudo_fs(path: Path | str) -> bool:
    """True when `path`, as written or with links resolved, is at or below /proc, /sys or
    /dev (the sandbox makes its own; the host's are never shown)."""
    lexical = os.path.normpath(os.path.abspath(path))
    real = os.path.realpath(path)
    return any(within(p, root) for p in (lexical, real) for root in PSEUDO_FS)


def host_home_dirs(env: Mapping[str, str] | None = None) -> set[str]:
    """The home directories whose contents are private: $HOME (ours and the step's), the
    passwd entry's, /root; each as written and resolved."""
    homes = {os.path.expanduser("~"), os.environ.get("HOME", ""), "/root"}
    if env is not None:
        homes.add(env.get("HOME", ""))
    with contextlib.suppress(KeyError, OSError):
        homes.add(pwd.getpwuid(os.getuid()).pw_dir)
    normal = {os.path.normpath(h) for h in homes if h and os.path.isabs(h)}
    normal |= {os.path.realpath(h) for h in normal}
    return {h for h in normal if h != "/" and not lexically_system(h)}


def home_of(path: str, homes: Iterable[str]) -> str | None:
    """The home directory `path` lies in ($HOME, /root, /home/<user>, ...), or None."""
    found = [home for home in homes if within(path, home)]
    for root in HOME_ROOTS:
        if path.startswith(root + "/"):
            found.append(os.path.join(root, path[len(root) + 1:].split("/", 1)[0]))
    return max(found, key=len) if found else None


def read_head(path: Path | str, size: int) -> bytes:
    """The first `size` bytes of the regular file `path` (links resolved); b"" for anything
    else or when it cannot be read.

    Opened with fsutil.open_regular (never blocks: a FIFO or device the worktree holds in
    place of a script must not hang the host while the mount plan is made).
    """
    try:
        fd = fsutil.open_regular(os.path.realpath(path))
    except (OSError, fsutil.RefusedFile):
        return b""
    try:
        return os.read(fd, size)
    except OSError:
        return b""
    finally:
        os.close(fd)
