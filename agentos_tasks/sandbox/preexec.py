"""What the forked child does before it execs bwrap (or the reaper), and the rlimits it sets.

`child_setup` returns the function proc.py hands to subprocess as `preexec_fn`. It runs in
the forked child, so it only makes system calls (open/write, prctl, keyctl, setrlimit,
kill) and takes no lock:

1. join the run's cgroups (so every later fork is counted by pids.max, and its memory
   by the v1 memory cgroup where that is a separate hierarchy);
2. die with the executor (PR_SET_PDEATHSIG), and re-check the parent afterwards: an
   executor that died before the prctl is followed at once;
3. join a new, empty session keyring: the executor's `user` keys are not the step's;
4. lower the rlimits (open files, no core dumps; file size only when the step has a
   bound; address space only where no cgroup bounds the memory: RLIMIT_AS makes JITs
   that reserve address space (V8, Go, the JVM) fail; RLIMIT_NPROC where no cgroup
   bounds the processes).
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import signal
from typing import TYPE_CHECKING

from agentos_tasks.sandbox import seccomp
from agentos_tasks.sandbox.spec import DEFAULT_MAX_OPEN_FILES, DEFAULT_MEMORY_BYTES

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from agentos_tasks.sandbox.spec import ConfinedSpec

_libc: list[ctypes.CDLL] = []
_PR_SET_PDEATHSIG = 1
_KEYCTL_JOIN_SESSION_KEYRING = 1


def libc_handle() -> ctypes.CDLL:
    """The C library, loaded once and in the parent (child_setup only calls into it)."""
    if not _libc:
        _libc.append(ctypes.CDLL(None, use_errno=True))
    return _libc[0]


def rlimits(spec: ConfinedSpec, nproc: int | None, *,
            memory_bounded: bool = False) -> list[tuple[int, int]]:
    """(resource, value) pairs, never above the current hard limit (we may only lower).

    RLIMIT_AS only when `memory_bounded` is False (no cgroup limits the run's memory),
    RLIMIT_FSIZE only when the spec has max_file_bytes."""
    wanted: list[tuple[int, int]] = []
    if not memory_bounded:
        wanted.append((resource.RLIMIT_AS, spec.memory_bytes or DEFAULT_MEMORY_BYTES))
    if spec.max_file_bytes is not None:
        wanted.append((resource.RLIMIT_FSIZE, spec.max_file_bytes))
    wanted += [
        (resource.RLIMIT_NOFILE, spec.max_open_files or DEFAULT_MAX_OPEN_FILES),
        (resource.RLIMIT_CORE, 0),
    ]
    if nproc is not None:
        wanted.append((resource.RLIMIT_NPROC, nproc))
    limits = []
    for res, value in wanted:
        _soft, hard = resource.getrlimit(res)
        limits.append((res, value if hard == resource.RLIM_INFINITY else min(value, hard)))
    return limits


def own_task_count() -> int:
    """Tasks (threads included) of our uid: RLIMIT_NPROC counts them all, host-wide."""
    uid, count = os.getuid(), 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid == uid:
                count += len(os.listdir(f"/proc/{entry}/task"))
        except OSError:
            continue
    return count


def _keyctl_number() -> int | None:
    arch = seccomp.ARCHES.get(os.uname().machine)
    return arch.numbers["keyctl"] if arch is not None else None


def child_setup(cgroup_procs: str | Iterable[str] | None, limits: Sequence[tuple[int, int]],
                libc: ctypes.CDLL, parent: int) -> Callable[[], None]:
    """Runs in the forked child before exec: join the cgroups (`cgroup_procs`: one
    cgroup.procs file or several, one per hierarchy), die with us (`parent`, our pid
    before the fork), a new empty session keyring, lower rlimits."""
    keyctl = _keyctl_number()
    procs_files = (() if cgroup_procs is None else
                   (cgroup_procs,) if isinstance(cgroup_procs, str) else tuple(cgroup_procs))

    def setup() -> None:
        for procs in procs_files:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, b"0")  # "0" = the writing process itself
            finally:
                os.close(fd)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the executor died before the prctl: follow it now
            os.kill(os.getpid(), signal.SIGKILL)
        if keyctl is not None:
            # The executor's session keyring (its `user` keys) is not the step's: join a
            # new anonymous one. ENOSYS: a kernel without keys has nothing to share.
            joined = libc.syscall(ctypes.c_long(keyctl),
                                  ctypes.c_long(_KEYCTL_JOIN_SESSION_KEYRING),
                                  ctypes.c_void_p(None))
            if joined < 0 and ctypes.get_errno() != errno.ENOSYS:
                raise OSError(ctypes.get_errno(), "cannot join a new session keyring")
        for res, value in limits:
            resource.setrlimit(res, (value, value))

    return setup
