"""Per-run cgroups: a hard bound on processes, and nothing sandboxed outlives the executor.

A run's cgroup (`Cgroup`) bounds its tasks with pids.max (RLIMIT_NPROC does not bind root)
and its memory where the memory controller is ours to use: memory.max in the same cgroup
on v2 (delegated), or memory.limit_in_bytes in a sibling cgroup of the same name in the v1
memory hierarchy (writable); it lists every task left to kill when the run ends.
`find_parent` probes once per process whether we may create one. With the memory bounded
there, proc.py sets no RLIMIT_AS (which breaks JITs that reserve address space).

Every run cgroup is named after its owner, the executor process:
`agentos-<pid>-<starttime>-<n>` (starttime from /proc/<pid>/stat, so a reused pid is not
mistaken for the owner). Two things remove the cgroups of an executor that died without
cleaning up (SIGKILL, OOM kill, a crash while bwrap was still setting the sandbox up, when
bwrap's own --die-with-parent does not reach its child yet):

- the guard: one small process per executor process, started by proc.py in its own
  session, that waits for the executor to die (a pidfd, else polling its parent pid) and
  then kills every task of that executor's cgroups and removes them, at once;
- the sweep: at the first confined run of every executor (`find_parent`), the cgroups
  whose owner is dead (including old-style `agentos-<pid>-<n>` names and probe dirs) are
  killed and removed, in case a guard was killed as well.

Stdlib only and no package imports: proc.py runs this file as the guard
(`python -I -S cgroups.py watch ...`). Nothing here starts a process.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

PREFIX = "agentos-"
PROBE_PREFIX = "agentos-probe-"
_POLL_S = 0.05


def start_time(pid: int) -> str | None:
    """The process's start time (clock ticks after boot, field 22 of /proc/<pid>/stat)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    return fields[19].decode() if len(fields) > 19 else None


def owner_name(pid: int, start: str, number: int) -> str:
    """The name of run cgroup `number` of executor (pid, start)."""
    return f"{PREFIX}{pid}-{start}-{number}"


def owner_of(name: str) -> tuple[int, str | None] | None:
    """(pid, start or None) of a cgroup directory name this module owns, else None."""
    if name.startswith(PROBE_PREFIX):
        rest = name[len(PROBE_PREFIX):]
        return (int(rest), None) if rest.isdigit() else None
    if not name.startswith(PREFIX):
        return None
    parts = name[len(PREFIX):].split("-")
    if not all(part.isdigit() for part in parts) or len(parts) not in (2, 3):
        return None
    return int(parts[0]), (parts[1] if len(parts) == 3 else None)


def owner_alive(pid: int, start: str | None) -> bool:
    """The owner still runs (for an old-style name without start time: the pid exists)."""
    now = start_time(pid)
    return now is not None and (start is None or now == start)


def tasks(path: Path) -> list[int]:
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def kill_tasks(path: Path) -> None:
    """SIGKILL every task in the cgroup until it is empty (bounded, about a second)."""
    kill_file = path / "cgroup.kill"  # cgroup v2: the kernel kills all, forks included
    for attempt in range(200):
        remaining = tasks(path)
        if not remaining:
            return
        if kill_file.exists():
            with contextlib.suppress(OSError):
                kill_file.write_text("1")
        for pid in remaining:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        # After a normal exit the tasks are usually gone within a fraction of a
        # millisecond: poll fast first (a flat 5 ms cost every step ~4 ms).
        time.sleep(min(0.0002 * 2 ** attempt, 0.005))


def remove(path: Path) -> None:
    """Kill what is left and rmdir the cgroup; the kernel may need a moment."""
    for attempt in range(200):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            kill_tasks(path)
            time.sleep(min(0.001 * (attempt + 1), 0.02))


def sweep(parent: Path, owner: tuple[int, str] | None = None) -> list[str]:
    """Kill and remove the cgroups under `parent` of `owner`, or (owner None) of every
    owner that is dead. Returns the names removed. Live executors' cgroups are kept."""
    removed: list[str] = []
    try:
        names = sorted(entry.name for entry in os.scandir(parent) if entry.is_dir())
    except OSError:
        return removed
    for name in names:
        found = owner_of(name)
        if found is None:
            continue
        if owner is not None:
            if found != owner:
                continue
        elif owner_alive(*found):
            continue
        remove(parent / name)
        if not (parent / name).exists():
            removed.append(name)
    return removed


# --- a run's cgroup, under a parent we may create children in ------------------------

@dataclass(frozen=True)
class CgroupParent:
    path: Path
    version: int  # 1 (pids hierarchy) or 2 (unified, pids delegated)
    memory: bool  # v2 with the memory controller delegated: memory.max is enforced too
    memory_v1: Path | None = None  # our dir in a writable v1 memory hierarchy, else None

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every directory holding run cgroups of ours (swept and guarded alike)."""
        return (self.path,) if self.memory_v1 is None else (self.path, self.memory_v1)


_lock = threading.Lock()
_parent: list[CgroupParent | None] = []  # [] = not probed yet
_counter = itertools.count()
_owner_starts: dict[int, str] = {}


def _own_cgroup_dirs(v1_controller: str = "pids") -> list[tuple[int, Path]]:
    """Our cgroup directory in a pids-capable hierarchy: v2 first, then v1 `pids` (or the
    v1 hierarchy of `v1_controller`)."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
        own = Path("/proc/self/cgroup").read_text()
    except OSError:
        return []
    mounts: dict[str, tuple[str, str]] = {}
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        if rfields[0] == "cgroup2":
            mounts.setdefault("v2", (fields[3], fields[4]))
        elif rfields[0] == "cgroup" and v1_controller in rfields[2].split(","):
            mounts.setdefault("v1", (fields[3], fields[4]))
    found: list[tuple[int, Path]] = []
    for line in own.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, cg_path = rest.partition(":")
        key = "v2" if hierarchy == "0" and controllers == "" else (
            "v1" if v1_controller in controllers.split(",") else "")
        if key not in mounts:
            continue
        mount_root, mount_point = mounts[key]
        if mount_root != "/" and not cg_path.startswith(mount_root):
            continue
        relative = cg_path[len(mount_root):] if mount_root != "/" else cg_path
        found.append((2 if key == "v2" else 1, Path(mount_point + "/" + relative.lstrip("/"))))
    return sorted(found, key=lambda item: -item[0])


def _usable_memory_v1() -> Path | None:
    """Our directory in the v1 memory hierarchy when we may make a child there with
    memory.limit_in_bytes (tried with a probe dir, removed at once)."""
    for version, directory in _own_cgroup_dirs("memory"):
        if version != 1:
            continue
        probe_dir = directory / f"{PROBE_PREFIX}{os.getpid()}"
        try:
            probe_dir.mkdir()
            try:
                (probe_dir / "memory.limit_in_bytes").write_text("-1")
            finally:
                probe_dir.rmdir()
        except OSError:
            return None
        return directory
    return None


def _usable_parent(version: int, directory: Path) -> CgroupParent | None:
    """`directory` as a parent when pids is delegated and a child with pids.max can be
    made in it (tried with a probe dir, removed at once)."""
    memory = False
    if version == 2:
        try:
            delegated = (directory / "cgroup.subtree_control").read_text().split()
        except OSError:
            return None
        if "pids" not in delegated:
            return None
        memory = "memory" in delegated
    probe_dir = directory / f"{PROBE_PREFIX}{os.getpid()}"
    try:
        probe_dir.mkdir()
        try:
            (probe_dir / "pids.max").write_text("max")
        finally:
            probe_dir.rmdir()
    except OSError:
        return None
    return CgroupParent(directory, version, memory)


def find_parent() -> CgroupParent | None:
    """Probe once whether we may create a child cgroup with pids.max here; the first time
    a parent is found, sweep the leftovers of dead executors from it."""
    with _lock:
        if _parent:
            return _parent[0]
        parent: CgroupParent | None = None
        for version, directory in _own_cgroup_dirs():
            parent = _usable_parent(version, directory)
            if parent is not None:
                break
        if parent is not None and not parent.memory:
            memory_v1 = _usable_memory_v1()
            if memory_v1 is not None:
                parent = CgroupParent(parent.path, parent.version, False, memory_v1)
        _parent.append(parent)
        if parent is not None:  # an executor that died before us left these behind
            for path in parent.paths:
                sweep(path)
        return parent


def owner_start() -> str:
    """This process's start time: with the pid it names the owner of our cgroups."""
    pid = os.getpid()
    if pid not in _owner_starts:
        _owner_starts[pid] = start_time(pid) or "0"
    return _owner_starts[pid]


class Cgroup:
    """One run's cgroup: bounds its tasks, and lists every task left to kill.

    `memory_limit` says how memory is bounded ("cgroup v2 memory.max=N", "cgroup v1
    memory.limit_in_bytes=N") or is "" when no limit could be set (the caller falls back
    to RLIMIT_AS); `memory_error` says why not. A task joins every file in `all_procs`.
    """

    def __init__(self, parent: CgroupParent, max_tasks: int, memory_bytes: int) -> None:
        name = owner_name(os.getpid(), owner_start(), next(_counter))
        self.path = parent.path / name
        self.path.mkdir()
        self.memory_limit = ""
        self.memory_error = "" if (parent.memory or parent.memory_v1) else \
            "no delegated v2 memory controller and no writable v1 memory hierarchy"
        self.memory_path: Path | None = None
        try:
            (self.path / "pids.max").write_text(str(max_tasks))
        except OSError:
            self.path.rmdir()
            raise
        if parent.memory:
            try:
                (self.path / "memory.max").write_text(str(memory_bytes))
                self.memory_limit = f"cgroup v2 memory.max={memory_bytes}"
            except OSError as exc:
                self.memory_error = f"memory.max: {exc}"
        elif parent.memory_v1 is not None:
            self._memory_v1(parent.memory_v1 / name, memory_bytes)
        self.procs = str(self.path / "cgroup.procs")
        self.all_procs: tuple[str, ...] = (self.procs,) if self.memory_path is None else \
            (self.procs, str(self.memory_path / "cgroup.procs"))

    def _memory_v1(self, path: Path, memory_bytes: int) -> None:
        try:
            path.mkdir()
        except OSError as exc:
            self.memory_error = f"v1 memory cgroup {path}: {exc}"
            return
        try:
            (path / "memory.limit_in_bytes").write_text(str(memory_bytes))
        except OSError as exc:
            self.memory_error = f"{path}/memory.limit_in_bytes: {exc}"
            path.rmdir()
            return
        # swap too, where accounted (memsw must stay >= the limit: set after it)
        with contextlib.suppress(OSError):
            (path / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
        self.memory_path = path
        self.memory_limit = f"cgroup v1 memory.limit_in_bytes={memory_bytes}"

    def _paths(self) -> tuple[Path, ...]:
        return (self.path,) if self.memory_path is None else (self.path, self.memory_path)

    def pids(self) -> list[int]:
        return tasks(self.path)

    def kill_all(self) -> None:
        """SIGKILL every task still in the cgroup until it is empty (bounded)."""
        for path in self._paths():
            kill_tasks(path)

    def remove(self) -> None:
        """rmdir the cgroup; the kernel may need a moment to release exited tasks."""
        for path in self._paths():
            remove(path)


# --- the guard, run as a script by proc.py --------------------------------------------

def _wait_for_death(pid: int) -> None:
    """Return once process `pid`, our parent, has exited."""
    pidfd = None
    with contextlib.suppress(OSError, AttributeError):
        pidfd = os.pidfd_open(pid)
    if os.getppid() != pid:  # already gone (we were re-parented) or the pidfd is not it
        return
    if pidfd is not None:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        while not poller.poll(1000):
            pass
        return
    while os.getppid() == pid:
        time.sleep(_POLL_S)


def watch(parent: Path, pid: int, start: str, *more: Path) -> None:
    """The guard: once executor `pid` is gone, remove its cgroups under `parent` (and
    under each of `more`: the v1 memory hierarchy's parent)."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)  # a terminal's ^C is for the executor, not us
    _wait_for_death(pid)
    for path in (parent, *more):
        sweep(path, (pid, start))


def main(argv: list[str]) -> int:
    if len(argv) >= 5 and argv[1] == "watch" and argv[3].isdigit():
        watch(Path(argv[2]), int(argv[3]), argv[4], *map(Path, argv[5:]))
        return 0
    sys.stderr.write("usage: cgroups.py watch PARENT PID STARTTIME [PARENT...]\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
