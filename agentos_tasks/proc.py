"""The one place that starts processes.

`run` starts trusted host programs (git) with an explicit, complete environment.
`run_confined` starts untrusted programs (run steps, coding-agent CLIs) inside the
sandbox that `agentos_tasks.sandbox` plans (the mount plan, the seccomp filter, the
cgroup, the child's setup before exec); that package starts nothing and never imports
this module. Nothing else in agentos_tasks may import subprocess, fork or exec; the static
gate (agentos_tasks/gates/static.py) proves it. That is why the reaper of backend none,
which forks and execs the step's program in its own interpreter, is written here, and why
the allowlist proxy of a step granted network (`python -m agentos_tasks.net.serve`, outside
the sandbox, for exactly one run_confined call) is started and ended here.
"""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from agentos_tasks.errors import EXIT_STEP, AgentosError
from agentos_tasks.sandbox import cgroups, preexec
from agentos_tasks.sandbox.backend import BwrapProbe, choose_backend, seccomp_filter
from agentos_tasks.sandbox.bwrap import (
    build_bwrap_argv,
    mask_plan,
    network_mode,
    probe_argv,
    read_init_pid,
    secret_environ,
    synthesized_files,
)
from agentos_tasks.sandbox.program import plan_program
from agentos_tasks.sandbox.spec import (
    DEFAULT_MAX_PROCESSES,
    DEFAULT_MEMORY_BYTES,
    ConfinedResult,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from agentos_tasks.sandbox.backend import SandboxBackend
    from agentos_tasks.sandbox.program import ProgramPlan
    from agentos_tasks.sandbox.spec import ConfinedSpec, NetworkGrant

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


class HostCoprocess:
    """A trusted host program kept running to answer one request per line on its stdin
    (git's `--stdin` modes), so a per-step question costs a pipe round trip instead of a
    process start. Same rules as `run`: `env` is the whole environment, its own session,
    every answer bounded by a timeout. An answer ends where the program echoes a marker
    line back (git echoes a line that is not an object id, flushed): the marker holds 128
    random bits, so nothing in a repository can forge the end of an answer.

    `ask` returns None when the program is gone, stopped answering or timed out; it is
    then ended, and the caller asks the one-shot way (`run`), which reports why.
    The program also ends when this process dies: its stdin closes."""

    def __init__(self, argv: Sequence[str], *, cwd: Path | None, env: Mapping[str, str]) -> None:
        import secrets

        self.argv = tuple(argv)
        self._marker = b"sync-agentos-" + secrets.token_hex(16).encode() + b"\n"
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            list(argv), cwd=cwd, env=dict(env), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        weakref.finalize(self, _end_coprocess, self._proc)

    def ask(self, line: bytes, timeout: float = HOST_TIMEOUT_S) -> bytes | None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None or b"\n" in line:
            return None
        try:
            proc.stdin.write(line + b"\n" + self._marker)
            proc.stdin.flush()
        except OSError:
            self.close()
            return None
        deadline = time.monotonic() + timeout
        answer = bytearray()
        fd = proc.stdout.fileno()
        while not answer.endswith(self._marker):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.close()
                return None
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, _READ_CHUNK)
            if not chunk:
                self.close()
                return None
            answer += chunk
        return bytes(answer[:-len(self._marker)])

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            _end_coprocess(proc)


def _end_coprocess(proc: subprocess.Popen[bytes]) -> None:
    """Close its stdin (git then exits), reap it; kill it if it does not go."""
    if proc.returncode is None:
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


class ProcError(AgentosError):
    """A trusted program exited non-zero; carries its result for the caller to inspect."""

    def __init__(self, result: ProcResult) -> None:
        err = result.stderr.decode("utf-8", "replace").strip() or result.text.strip()
        super().__init__(f"{' '.join(result.argv[:4])} ... exited {result.returncode}: {err}")
        self.result = result


# --- confined programs: the bwrap probe and the cgroup guard ---------------------------

_KILL_GRACE_S = 5.0
_READ_CHUNK = 1 << 16
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
                    probe_argv(bwrap, userns=userns), env={"PATH": "/usr/bin:/bin"},
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


_guard_lock = threading.Lock()
_guards: dict[int, subprocess.Popen[bytes]] = {}  # executor pid -> its guard process


def _ensure_guard(parent: cgroups.CgroupParent) -> None:
    """Start (once per process, again if it died) the guard that removes our cgroups and
    kills their tasks when we die: nothing sandboxed outlives the executor. The guard is
    sandbox/cgroups.py run as a script (stdlib only); it starts nothing itself."""
    pid = os.getpid()
    with _guard_lock:
        guard = _guards.get(pid)
        if guard is not None and guard.poll() is None:
            return
        _guards[pid] = subprocess.Popen(
            [sys.executable, "-I", "-S", cgroups.__file__, "watch", str(parent.path),
             str(pid), cgroups.owner_start(), *map(str, parent.paths[1:])],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd="/", env={}, start_new_session=True)


# --- backend none: a subreaper that kills every descendant ------------------------------
#
# Started as `python -I -S -c <_reaper_source()> cfg -- argv...` with the step's
# environment. It becomes a child subreaper, so double-forked and setsid'd descendants are
# re-parented to it, and kills all of them when the program exits or when we send SIGTERM
# (timeout). The _Reaper*/_reaper_* definitions below are that program, copied as source
# into its own interpreter: they use only the modules named in _REAPER_IMPORTS and each
# other, never anything else of this module.

_REAPER_IMPORTS = "import ctypes, json, os, resource, signal, sys"


class _ReaperStop(Exception):
    """SIGTERM reached the reaper: stop waiting, kill every descendant."""


def _reaper_on_term(*_: object) -> None:
    raise _ReaperStop


def _reaper_start(argv: list[str], limits: list[list[int]]) -> int:
    """Fork the step's program in a new session with its rlimits; the child's pid."""
    main = os.fork()
    if main == 0:
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.setsid()
            for res, value in limits:
                resource.setrlimit(res, (value, value))
            os.execvp(argv[0], argv)  # noqa: S606 - the step's argv, no shell
        except BaseException as exc:  # the child must never return into the reaper
            os.write(2, f"agentos: cannot start {argv[0]}: {exc}\n".encode())
        os._exit(127)
    return main


def _reaper_descendants() -> list[int]:
    """Every process below the reaper (parent links read from /proc/<pid>/stat)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    stat = handle.read()
                ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
                parents.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    found: list[int] = []
    todo = [os.getpid()]
    while todo:
        kids = parents.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _reaper_reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def _reaper_main() -> None:
    cfg = json.loads(sys.argv[1])
    argv = sys.argv[3:]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG: the executor died -> clean up
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGTERM, _reaper_on_term)
    main = _reaper_start(argv, cfg["rlimits"])
    status = None
    try:
        while status is None:
            pid, waited = os.waitpid(-1, 0)
            if pid == main:
                status = waited
    except _ReaperStop:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for _ in range(10000):
        left = _reaper_descendants()
        if not left:
            break
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        _reaper_reap()
    _reaper_reap()
    if status is None:
        os.kill(os.getpid(), signal.SIGKILL)
        return  # not reached
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    sys.exit(os.waitstatus_to_exitcode(status))


_REAPER_PARTS = (_ReaperStop, _reaper_on_term, _reaper_start, _reaper_descendants,
                 _reaper_reap, _reaper_main)
_reaper_program: list[str] = []


def _reaper_source() -> str:
    """The reaper as one `-c` program (built once from the definitions above)."""
    if not _reaper_program:
        parts = [_REAPER_IMPORTS, *(inspect.getsource(part) for part in _REAPER_PARTS),
                 "_reaper_main()"]
        _reaper_program.append("\n\n".join(parts) + "\n")
    return _reaper_program[0]


# --- the allowlist proxy of a step granted network (mode "proxy") -----------------------
#
# One proxy per run_confined call, outside the sandbox, in its own session, listening on a
# unix socket in a private temp dir (0700, neither the run dir nor the worktree) that bwrap
# binds in for the bridge. It dies with the executor (PR_SET_PDEATHSIG) and, whatever
# happens to the step, is ended before run_confined returns.

PROXY_COMMAND: tuple[str, ...] = (sys.executable, "-m", "agentos_tasks.net.serve")
PROXY_READY_S = 10.0
_PROXY_STOP_S = 5.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


@dataclass
class _Proxy:
    process: subprocess.Popen[bytes]
    socket: Path
    private_dir: Path
    log: Path
    drain: threading.Thread | None = None


_PROXY_DIR_PREFIX = "agentos-net-"
_swept: list[int] = []  # pids of the processes that swept already (fork-safe)


def _sweep_proxy_dirs() -> None:
    """Once per executor process: remove the private proxy dirs (socket, config) of
    executors that died without cleaning up (SIGKILL). Only real 0700 directories of our
    uid named agentos-net-<pid>-<starttime>-* whose owner is gone."""
    if os.getpid() in _swept:
        return
    _swept.append(os.getpid())
    root = tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            parts = entry.name[len(_PROXY_DIR_PREFIX):].split("-")
            if not entry.name.startswith(_PROXY_DIR_PREFIX) or len(parts) < 3 or \
                    not parts[0].isdigit() or not parts[1].isdigit():
                continue
            info = entry.stat(follow_symlinks=False)
            if not entry.is_dir(follow_symlinks=False) or info.st_uid != os.getuid() or \
                    info.st_mode & 0o077 or cgroups.owner_alive(int(parts[0]), parts[1]):
                continue
            shutil.rmtree(entry.path, ignore_errors=True)


def proxy_config(grant: NetworkGrant) -> dict[str, object]:
    """The proxy's --config: what it may let through, as the policy granted it."""
    return {"step": grant.step, "allow": list(grant.allow),
            "resolve": dict(grant.resolve), "unrestricted": grant.unrestricted,
            "rule_id": grant.rule_id}


def _proxy_failure(message: str, proxy: _Proxy) -> AgentosError:
    tail = ""
    with contextlib.suppress(OSError):
        tail = proxy.log.read_bytes()[-2000:].decode("utf-8", "replace").strip()
    return AgentosError(f"the network proxy for this step {message}"
                        + (f": {tail}" if tail else ""), where=str(proxy.log), code=EXIT_STEP,
                        hint="see the proxy's log; is agentos_tasks.net.serve installed "
                             "with its dependency proxy.py?")


def _start_proxy(grant: NetworkGrant, worktree: Path) -> _Proxy:
    """Start the proxy for `grant` and wait (PROXY_READY_S at most) for its `ready`."""
    if grant.ledger is None:
        raise AgentosError("a step granted network (mode proxy) needs a ledger path",
                           code=EXIT_STEP, hint="NetworkGrant.ledger: the run's network "
                           "ledger file (JSON lines, written by the proxy)")
    ledger = Path(os.path.abspath(grant.ledger))
    if ledger == worktree or worktree in ledger.parents or \
            Path(os.path.realpath(worktree)) in Path(os.path.realpath(ledger)).parents:
        raise AgentosError(f"the network ledger {ledger} is inside the worktree {worktree}: "
                           "the sandboxed program could rewrite it", code=EXIT_STEP,
                           hint="keep the ledger in the run directory, outside the worktree")
    ledger.parent.mkdir(parents=True, exist_ok=True)
    log = ledger.with_name(ledger.stem + ".proxy.log")
    _sweep_proxy_dirs()
    private_dir = Path(tempfile.mkdtemp(  # 0700, named after its owner for the sweep
        prefix=f"{_PROXY_DIR_PREFIX}{os.getpid()}-{cgroups.owner_start()}-"))
    socket_path = private_dir / "proxy.sock"
    config = private_dir / "config.json"
    config.write_text(json.dumps(proxy_config(grant), sort_keys=True))
    argv = [*PROXY_COMMAND, "--socket", str(socket_path), "--config", str(config),
            "--ledger", str(ledger)]
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": _PACKAGE_ROOT}
    try:
        with open(log, "ab") as log_file:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_file,
                cwd="/", env=env, start_new_session=True,
                preexec_fn=preexec.child_setup(  # noqa: PLW1509 - prctl/keyctl only
                    None, [], preexec.libc_handle(), os.getpid()))
    except OSError as exc:
        shutil.rmtree(private_dir, ignore_errors=True)
        raise AgentosError(f"cannot start the network proxy {argv[0]}: {exc}",
                           code=EXIT_STEP) from None
    proxy = _Proxy(process, socket_path, private_dir, log)
    try:
        _wait_ready(proxy)
    except BaseException:
        _stop_proxy(proxy)
        raise
    return proxy


def _wait_ready(proxy: _Proxy) -> None:
    """Block until the proxy printed `ready` (then drain its stdout into the log)."""
    stdout = proxy.process.stdout
    if stdout is None:  # pragma: no cover - always a pipe
        raise AgentosError("the network proxy has no stdout pipe", code=EXIT_STEP)
    fd = stdout.fileno()
    deadline = time.monotonic() + PROXY_READY_S
    seen = b""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    while b"ready\n" not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _proxy_failure(f"did not say ready within {PROXY_READY_S:g} s", proxy)
        if not poller.poll(remaining * 1000):
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            code = proxy.process.wait()
            raise _proxy_failure(f"exited ({code}) before it was ready", proxy)
        seen += chunk
    if not proxy.socket.exists():
        raise _proxy_failure(f"said ready but its socket {proxy.socket} does not exist",
                             proxy)

    def drain() -> None:  # whatever it prints later goes to its log, never blocks it
        with contextlib.suppress(OSError, ValueError), open(proxy.log, "ab") as out:
            while chunk := os.read(fd, 4096):
                out.write(chunk)

    proxy.drain = threading.Thread(target=drain, daemon=True)
    proxy.drain.start()


def _stop_proxy(proxy: _Proxy) -> int | None:
    """SIGTERM the proxy's process group, SIGKILL it after _PROXY_STOP_S; its exit code
    (None when it had to be killed). Its private dir (socket, config) is removed."""
    code: int | None = None
    try:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proxy.process.pid, signal.SIGTERM)
        try:
            code = proxy.process.wait(timeout=_PROXY_STOP_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proxy.process.pid, signal.SIGKILL)
            proxy.process.wait()
        # (it starts no process: once it is reaped its group id is free, never signal it)
        if proxy.drain is not None:
            proxy.drain.join(1.0)
    finally:
        if proxy.process.stdout is not None:
            with contextlib.suppress(OSError):
                proxy.process.stdout.close()
        shutil.rmtree(proxy.private_dir, ignore_errors=True)
    return code


@contextlib.contextmanager
def _network(spec: ConfinedSpec, backend: str, notes: list[str]) -> Iterator[Path | None]:
    """The network of one run (noted): nothing, or a proxy that lives exactly as long as
    this context; yields the proxy's socket (mode proxy under bwrap) or None."""
    grant = spec.network
    mode = network_mode(grant)
    if backend != "bwrap":
        notes.append(f"network: NOT isolated (backend {backend} runs on the host's "
                     f"network; the policy asked for {mode})")
        yield None
        return
    if mode == "none":
        notes.append("network: none")
        yield None
        return
    proxy = _start_proxy(grant, Path(os.path.abspath(spec.worktree)))
    notes.append(f"network: proxy (rule {grant.rule_id or '?'}, {len(grant.allow)} allow "
                 f"entries{', unrestricted' if grant.unrestricted else ''})")
    try:
        yield proxy.socket
    except BaseException:
        _stop_proxy(proxy)
        raise
    code = _stop_proxy(proxy)
    if code != 0:  # a proxy that did not end cleanly may not have written every entry
        raise _proxy_failure(f"ended with {code if code is not None else 'a kill'}, so its "
                             "ledger may be incomplete", proxy)


# --- running ------------------------------------------------------------------------------

@dataclass
class _Output:
    kept: int = 0
    truncated: bool = False
    eof: bool = False


@dataclass
class _Fds:
    """The pipes of one run: `output` (ours, the program's merged stdout and stderr),
    `child` (read ends of data pipes and bwrap's info pipe: the child's, closed here once
    it started) and `ours` (closed when the run ends; bwrap's --info-fd reads `info`)."""

    output: int
    child: list[int] = field(default_factory=list)
    ours: list[int] = field(default_factory=list)
    info: int | None = None


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
    backend = choose_backend(spec.isolation, probe_bwrap)
    notes = [backend.note] if backend.note else []
    output_path.parent.mkdir(parents=True, exist_ok=True)
    worktree = Path(os.path.abspath(spec.worktree))
    plan = plan_program(argv[0], spec.env, worktree)
    if plan.refused:
        return _not_started(argv, output_path, f"not run: {plan.refused}", backend.name,
                            notes)
    if plan.program is None:
        return _not_started(argv, output_path, f"program not found: {argv[0]} (PATH="
                            f"{spec.env.get('PATH', '')})", backend.name, notes)
    # what the spec asks for must be possible before anything starts (ValueError: the
    # caller refuses the step): a known network mode, maskable entries, secret names
    network_mode(spec.network)
    mask_plan(spec.masked, worktree)
    secrets = secret_environ(spec)
    filter_program = seccomp_filter(backend, spec.isolation, notes)
    with _network(spec, backend.name, notes) as proxy_socket:
        cgroup, nproc = _bound_processes(spec, backend.name, notes)
        limits = preexec.rlimits(spec, nproc, memory_bounded=_memory_note(spec, cgroup, notes))
        if spec.max_file_bytes is not None:
            notes.append(f"file size: RLIMIT_FSIZE={spec.max_file_bytes}")
        read_fd, write_fd = os.pipe()
        fds = _Fds(read_fd, ours=[read_fd])
        wrapper: list[str] = [str(argv[0])]
        try:
            wrapper, setup = _wrapper(argv, spec, backend, plan, filter_program, limits,
                                      cgroup, fds, proxy_socket)
            # bwrap's own environment is the secrets only (bwrap hands it on: no
            # --clearenv, everything else is --setenv); the reaper gets the program's
            env = secrets if backend.name == "bwrap" else dict(spec.env)
            child = subprocess.Popen(
                wrapper, cwd=worktree, env=env, stdin=subprocess.DEVNULL,
                stdout=write_fd, stderr=write_fd, pass_fds=fds.child,
                preexec_fn=setup,  # noqa: PLW1509 - open/write/prctl/keyctl/setrlimit
                start_new_session=True)
        except BaseException as exc:
            for fd in fds.ours:
                os.close(fd)
            if cgroup is not None:
                cgroup.remove()
            if not isinstance(exc, (OSError, subprocess.SubprocessError)):
                raise
            return _not_started(argv, output_path, f"cannot start {wrapper[0]}: {exc}",
                                backend.name, notes)
        finally:
            os.close(write_fd)
            for fd in fds.child:
                os.close(fd)
        code, timed_out, state = _supervise(child, spec, backend.name, output_path,
                                            started + spec.timeout_s, cgroup, fds)
    return ConfinedResult(tuple(argv), code, timed_out, time.monotonic() - started,
                          state.kept, state.truncated, backend.name, tuple(wrapper),
                          tuple(notes))


def _memory_note(spec: ConfinedSpec, cgroup: cgroups.Cgroup | None,
                 notes: list[str]) -> bool:
    """How the run's memory is bounded (noted); True when a cgroup limit applies (then no
    RLIMIT_AS: it makes JITs that reserve address space fail)."""
    if cgroup is not None and cgroup.memory_limit:
        notes.append(f"memory: {cgroup.memory_limit}")
        return True
    why = cgroup.memory_error if cgroup is not None else "no cgroup"
    notes.append(f"memory: RLIMIT_AS={spec.memory_bytes or DEFAULT_MEMORY_BYTES} (fallback: "
                 f"no cgroup memory limit: {why})")
    return False


def _bound_processes(spec: ConfinedSpec, backend: str,
                     notes: list[str]) -> tuple[cgroups.Cgroup | None, int | None]:
    """How the run's processes are bounded (noted): its own cgroup's pids.max, with the
    guard running for the executor's death; else the RLIMIT_NPROC value to set (returned),
    which does not bind root."""
    max_processes = spec.max_processes or DEFAULT_MAX_PROCESSES
    memory_bytes = spec.memory_bytes or DEFAULT_MEMORY_BYTES
    overhead = 2 if backend == "bwrap" else 1  # bwrap monitor + init / the reaper
    cgroup: cgroups.Cgroup | None = None
    cgroup_parent = cgroups.find_parent()
    if cgroup_parent is not None:
        # the guard first: a cgroup that exists always has a guard process that will
        # remove it, however early the executor dies (one that finds us gone sweeps)
        guard_note = None
        try:
            _ensure_guard(cgroup_parent)
        except OSError as exc:  # still PDEATHSIG, and the next executor's sweep
            guard_note = f"processes: no guard for the executor's death ({exc})"
        try:
            cgroup = cgroups.Cgroup(cgroup_parent, max_processes + overhead, memory_bytes)
        except OSError as exc:
            notes.append(f"processes: cgroup unavailable ({exc})")
        else:
            notes.append(f"processes: cgroup v{cgroup_parent.version} pids.max="
                         f"{max_processes + overhead}")
            if guard_note:
                notes.append(guard_note)
            return cgroup, None
    if os.getuid() == 0:
        notes.append("processes: NOT bounded (root ignores RLIMIT_NPROC, no cgroup)")
        return None, None
    nproc = preexec.own_task_count() + max_processes
    notes.append(f"processes: RLIMIT_NPROC={nproc} (per uid, host-wide)")
    return None, nproc


def _wrapper(argv: Sequence[str], spec: ConfinedSpec, backend: SandboxBackend,  # noqa: PLR0917
             plan: ProgramPlan, filter_program: bytes | None, limits: list[tuple[int, int]],
             cgroup: cgroups.Cgroup | None, fds: _Fds,
             proxy_socket: Path | None) -> tuple[list[str], Callable[[], None]]:
    """The argv actually started (bwrap, or the reaper for backend none) and the child's
    setup before exec. bwrap gets its data through pipes registered in `fds`."""
    procs = cgroup.all_procs if cgroup else None
    if backend.name == "bwrap":
        if backend.probe is None:
            raise AgentosError("backend bwrap was chosen without a probe of bwrap",
                               code=EXIT_STEP)
        data_fds = {inner_path: _data_pipe(content, fds) for inner_path, content
                    in synthesized_files(spec, os.getuid(), os.getgid()).items()}
        fds.info, info_write = os.pipe()
        fds.ours.append(fds.info)
        fds.child.append(info_write)
        seccomp_fd = _data_pipe(filter_program, fds) if filter_program is not None else None
        bridge_plan = _bridge_plan(spec.env, os.path.abspath(spec.worktree)) \
            if proxy_socket is not None else None
        wrapper = build_bwrap_argv(argv, spec, backend.probe.bwrap, plan=plan,
                                   data_fds=data_fds, info_fd=info_write,
                                   userns=backend.probe.userns, seccomp_fd=seccomp_fd,
                                   proxy_socket=proxy_socket, bridge_plan=bridge_plan)
        return wrapper, preexec.child_setup(procs, limits, preexec.libc_handle(), os.getpid())
    config = json.dumps({"rlimits": limits})
    wrapper = [sys.executable, "-I", "-S", "-c", _reaper_source(), config, "--", *argv]
    return wrapper, preexec.child_setup(procs, [], preexec.libc_handle(), os.getpid())


def _bridge_plan(env: Mapping[str, str], worktree: str) -> ProgramPlan:
    """The plan of the interpreter that runs the bridge (sys.executable), cached: planning
    an installation under a home directory lists its files, about a second for pyenv."""
    key = (env.get("PATH", ""), env.get("HOME", ""), env.get("PYENV_VERSION", ""), worktree)
    with _bridge_plans_lock:
        cached = _bridge_plans.get(key)
        if cached is None:
            cached = plan_program(sys.executable, env, Path(worktree))
            if len(_bridge_plans) > 16:
                _bridge_plans.clear()
            _bridge_plans[key] = cached
        return cached


_bridge_plans: dict[tuple[str, str, str, str], ProgramPlan] = {}
_bridge_plans_lock = threading.Lock()


def _data_pipe(content: bytes, fds: _Fds) -> int:
    """A pipe holding `content`, its read end for the child. Small data only (passwd,
    group, a git config, the seccomp filter of about 1 kB): it fits the pipe buffer."""
    read_end, write_end = os.pipe()
    fds.child.append(read_end)
    os.write(write_end, content)
    os.close(write_end)
    return read_end


def _supervise(child: subprocess.Popen[bytes], spec: ConfinedSpec, backend: str,  # noqa: PLR0917
               output_path: Path, deadline: float, cgroup: cgroups.Cgroup | None,
               fds: _Fds) -> tuple[int, bool, _Output]:
    """Copy the output until the program ends or `deadline`, kill the whole tree on
    timeout, and leave nothing of the run behind: (exit code, timed out, output)."""
    state = _Output()
    timed_out = False
    try:
        with open(output_path, "wb") as out:
            finished = _pump(fds.output, out, spec.output_limit, state, deadline)
            if finished:
                try:
                    child.wait(timeout=max(deadline - time.monotonic(), 0.0))
                except subprocess.TimeoutExpired:
                    finished = False  # it closed its output but kept running
            if not finished:
                timed_out = True
                _kill_tree(child, backend, fds.info, cgroup)
                _pump(fds.output, out, spec.output_limit, state,
                      time.monotonic() + _KILL_GRACE_S)
            code = _wait_or_kill(child, cgroup)
    finally:
        for fd in fds.ours:
            os.close(fd)
        if cgroup is not None:
            cgroup.kill_all()  # belt and braces: nothing of the run survives it
            cgroup.remove()
    return (-signal.SIGKILL if timed_out else code), timed_out, state


def _kill_tree(child: subprocess.Popen[bytes], backend: str, info_fd: int | None,
               cgroup: cgroups.Cgroup | None) -> None:
    """End every process of the run: the namespace init (bwrap) or the reaper's tree."""
    if backend == "bwrap":
        init_pid = read_init_pid(info_fd) if info_fd is not None else None
        if init_pid is not None and child.poll() is None:
            # bwrap has not reaped its init yet, so the pid cannot have been reused.
            with contextlib.suppress(ProcessLookupError):
                os.kill(init_pid, signal.SIGKILL)  # pid 1 of the namespace: all of it dies
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
    else:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)  # the reaper kills its descendants, then itself
        try:
            child.wait(timeout=_KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
    if cgroup is not None:
        cgroup.kill_all()


def _wait_or_kill(child: subprocess.Popen[bytes], cgroup: cgroups.Cgroup | None) -> int:
    try:
        return child.wait(timeout=_KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        if cgroup is not None:
            cgroup.kill_all()
        return child.wait()
