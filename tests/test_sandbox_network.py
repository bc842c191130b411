"""The sandbox's network, secrets, masks and limits: real bwrap, real sockets, real proxy.

Mode "none" is an empty network namespace; mode "proxy" adds the bridge on the sandbox's
127.0.0.1:3128 that leads only to the allowlist proxy outside (agentos_tasks.net.serve),
which is started and ended by proc.run_confined. Upstreams are loopback servers of this
test, reached through a resolve pin (`model.test` -> 127.0.0.1).
"""

from __future__ import annotations

import http.server
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from security.conftest import (  # reused skip/fail-under-CI logic
    _no_forced_backend,  # noqa: F401 - autouse: AGENTOS_SANDBOX=none must not weaken these
    bwrap_required,  # noqa: F401 - fixture used via requires_bwrap
    host_processes_with,
    requires_bwrap,
)

from agentos_tasks import proc
from agentos_tasks.proc import run_confined
from agentos_tasks.sandbox import cgroups
from agentos_tasks.sandbox.backend import SANDBOX_ENV_VAR
from agentos_tasks.sandbox.bwrap import (
    BRIDGE_PATH,
    PROXY_SOCKET,
    build_bwrap_argv,
    mask_plan,
    secret_environ,
)
from agentos_tasks.sandbox.spec import (
    NO_NETWORK,
    PROXY_PORT,
    ConfinedResult,
    ConfinedSpec,
    NetworkGrant,
)

pytestmark = requires_bwrap
HOST_PATH = os.environ.get("PATH", "/usr/bin:/bin")
PY = sys.executable


def make_spec(worktree: Path, **overrides: object) -> ConfinedSpec:
    values: dict[str, object] = {
        "worktree": worktree, "readonly_paths": (),
        "env": {"PATH": HOST_PATH, "LANG": "C.UTF-8"}, "network": NO_NETWORK,
        "isolation": "required", "timeout_s": 30.0, "output_limit": 1 << 20,
        "max_file_bytes": None,
    }
    values.update(overrides)
    return ConfinedSpec(**values)  # type: ignore[arg-type]


def run(tmp_path: Path, argv: list[str], **overrides: object) -> tuple[ConfinedResult, str]:
    worktree = tmp_path / "wt"
    worktree.mkdir(exist_ok=True)
    log = tmp_path / "logs" / f"step-{uuid.uuid4().hex[:8]}.out"
    result = run_confined(argv, make_spec(worktree, **overrides), log)
    return result, log.read_text(errors="replace")


def py(code: str) -> list[str]:
    return [PY, "-I", "-c", code]


# --- the proxy: agentos_tasks.net.serve, started by proc.run_confined -----------------

REAL_PROXY = Path(proc.__file__).parent / "net" / "serve.py"


@pytest.fixture
def proxy_command() -> tuple[str, ...]:
    """The command proc starts as the proxy: the package's own, never a stand-in."""
    assert REAL_PROXY.is_file(), f"the allowlist proxy {REAL_PROXY} is missing"
    assert proc.PROXY_COMMAND[1:] == ("-m", "agentos_tasks.net.serve")
    return proc.PROXY_COMMAND


def ledger_entries(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def proxy_pids(ledger: Path) -> list[int]:
    """Host processes that are a proxy of this test (its ledger path in their argv)."""
    return host_processes_with(str(ledger))


@pytest.fixture
def upstream() -> Iterator[int]:
    """A loopback HTTP server (the 'model server'): GET /hello -> b'upstream says hi'."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"upstream says hi"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def host_listeners() -> Iterator[dict[str, object]]:
    """A host-only TCP listener, a UDP socket and an abstract unix socket on loopback."""
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.5)
    name = f"agentos-test-{uuid.uuid4().hex}"
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind("\0" + name)
    unix.listen(8)
    accepted: list[str] = []
    stop = threading.Event()

    def serve(sock: socket.socket, label: str) -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except (TimeoutError, OSError):
                continue
            accepted.append(label)
            with conn:
                conn.sendall(b"HOST-ONLY-SECRET\n")

    threads = [threading.Thread(target=serve, args=(s, label), daemon=True)
               for s, label in ((tcp, "tcp"), (unix, "unix"))]
    for thread in threads:
        thread.start()
    yield {"tcp": tcp.getsockname()[1], "udp": udp, "udp_port": udp.getsockname()[1],
           "abstract": name, "accepted": accepted}
    stop.set()
    for thread in threads:
        thread.join(2)
    for sock in (tcp, udp, unix):
        sock.close()


PROBE = r'''
import socket, sys
what, arg = sys.argv[1], sys.argv[2]
try:
    if what == "tcp":
        s = socket.create_connection(("127.0.0.1", int(arg)), timeout=3)
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(3)
        s.connect("\0" + arg)
    print("GOT", s.recv(100))
except OSError as exc:
    print("REFUSED", type(exc).__name__)
'''


# --- mode none -------------------------------------------------------------------------

def test_argv_never_shares_the_host_network(tmp_path: Path) -> None:
    for grant in (NO_NETWORK, NetworkGrant("proxy", ("model.test:443",), rule_id="r")):
        argv = build_bwrap_argv(["true"], make_spec(tmp_path, network=grant), Path("/x/bwrap"),
                                proxy_socket=tmp_path / "proxy.sock")
        assert "--unshare-all" in argv and "--share-net" not in argv
        assert "/etc/resolv.conf" not in argv
        joined = " ".join(argv)
        assert "--ro-bind /etc/hosts" not in joined


def test_mode_none_has_no_route_to_host_loopback(
        tmp_path: Path, host_listeners: dict[str, object]) -> None:
    for what, arg in (("tcp", host_listeners["tcp"]), ("abstract", host_listeners["abstract"])):
        result, out = run(tmp_path, [*py(PROBE), what, str(arg)])
        assert result.exit_code == 0, out
        assert "REFUSED" in out and "HOST-ONLY-SECRET" not in out, (what, out)
    assert host_listeners["accepted"] == []
    assert "network: none" in result.notes


def test_mode_none_udp_to_host_loopback_never_arrives(
        tmp_path: Path, host_listeners: dict[str, object]) -> None:
    port = host_listeners["udp_port"]
    code = ("import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"for _ in range(5): s.sendto(b'leak', ('127.0.0.1', {port}))\n"
            "print('sent')\n")
    result, out = run(tmp_path, py(code))
    assert result.exit_code == 0 and "sent" in out, out  # it "works" inside: its own lo
    udp = host_listeners["udp"]
    assert isinstance(udp, socket.socket)
    with pytest.raises(TimeoutError):
        udp.recvfrom(100)


def test_mode_none_has_synthesized_hosts_and_no_resolv_conf(tmp_path: Path) -> None:
    result, out = run(tmp_path, ["sh", "-c", "cat /etc/hosts; test -e /etc/resolv.conf && "
                                 "echo RESOLV-PRESENT; ip -o link 2>/dev/null || "
                                 "ls /sys/class/net 2>/dev/null; true"])
    assert result.exit_code == 0, out
    assert "127.0.0.1 localhost" in out and "::1 localhost" in out
    assert "RESOLV-PRESENT" not in out


# --- mode proxy ------------------------------------------------------------------------

FETCH = r'''
import os, sys, urllib.request, urllib.error
url = sys.argv[1]
assert os.environ["HTTP_PROXY"] == "http://127.0.0.1:3128", os.environ.get("HTTP_PROXY")
try:
    print("BODY", urllib.request.urlopen(url, timeout=10).read().decode())
except urllib.error.HTTPError as exc:
    print("STATUS", exc.code)
except OSError as exc:
    print("ERROR", exc)
'''


def grant_for(tmp_path: Path, port: int, **overrides: object) -> NetworkGrant:
    values: dict[str, object] = {
        "mode": "proxy", "allow": (f"model.test:{port}",),
        "resolve": (("model.test", "127.0.0.1"),), "rule_id": "tools[0]", "step": "s1",
        "ledger": tmp_path / "run" / "network.jsonl"}
    values.update(overrides)
    return NetworkGrant(**values)  # type: ignore[arg-type]


def test_proxy_fetches_an_allowed_upstream_and_records_it(
        tmp_path: Path, upstream: int, proxy_command: tuple[str, ...]) -> None:
    grant = grant_for(tmp_path, upstream)
    result, out = run(tmp_path, [*py(FETCH), f"http://model.test:{upstream}/hello"],
                      network=grant)
    assert result.exit_code == 0, out
    assert "BODY upstream says hi" in out, out
    assert "network: proxy (rule tools[0], 1 allow entries)" in result.notes
    wrapper = " ".join(result.wrapper_argv)
    assert f"{BRIDGE_PATH} {PROXY_PORT} {PROXY_SOCKET} --" in wrapper
    entries = ledger_entries(grant.ledger)  # type: ignore[arg-type]
    assert any(e["host"] == "model.test" and e["port"] == upstream and
               e["decision"] == "allow" for e in entries), entries
    assert proxy_pids(grant.ledger) == []  # type: ignore[arg-type]


def test_proxy_denies_an_unlisted_host_with_403(
        tmp_path: Path, upstream: int, proxy_command: tuple[str, ...]) -> None:
    grant = grant_for(tmp_path, upstream, resolve=(("model.test", "127.0.0.1"),
                                                   ("other.test", "127.0.0.1")))
    result, out = run(tmp_path, [*py(FETCH), f"http://other.test:{upstream}/hello"],
                      network=grant)
    assert result.exit_code == 0, out
    assert "STATUS 403" in out, out
    entries = ledger_entries(grant.ledger)  # type: ignore[arg-type]
    assert any(e["host"] == "other.test" and e["decision"] == "deny" for e in entries), entries


TUNNEL = r'''
import socket, sys
host = sys.argv[1]
s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
s.sendall(f"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
head = b""
while b"\r\n\r\n" not in head:
    chunk = s.recv(4096)
    if not chunk:
        break
    head += chunk
print("TUNNEL", head.split(b"\r\n")[0].decode())
s.sendall(b"GET /hello HTTP/1.0\r\nHost: model.test\r\n\r\n")
s.shutdown(socket.SHUT_WR)  # half-close: the answer must still come back
reply = b""
while chunk := s.recv(4096):
    reply += chunk
print("REPLY", reply.split(b"\r\n\r\n", 1)[-1].decode())
'''


def test_connect_tunnel_through_the_bridge_survives_a_half_close(
        tmp_path: Path, upstream: int, proxy_command: tuple[str, ...]) -> None:
    grant = grant_for(tmp_path, upstream)
    result, out = run(tmp_path, [*py(TUNNEL), f"model.test:{upstream}"], network=grant)
    assert result.exit_code == 0, out
    assert "TUNNEL HTTP/1.1 200" in out and "REPLY upstream says hi" in out, out
    entries = ledger_entries(grant.ledger)  # type: ignore[arg-type]
    assert [e["decision"] for e in entries if e["host"] == "model.test"] == ["allow"], entries


def test_proxy_mode_cannot_reach_host_loopback_directly(
        tmp_path: Path, host_listeners: dict[str, object], upstream: int,
        proxy_command: tuple[str, ...]) -> None:
    grant = grant_for(tmp_path, upstream)
    for what, arg in (("tcp", host_listeners["tcp"]), ("tcp", upstream),
                      ("abstract", host_listeners["abstract"])):
        result, out = run(tmp_path, [*py(PROBE), what, str(arg)], network=grant)
        assert result.exit_code == 0, out
        assert "REFUSED" in out and "GOT" not in out, (what, arg, out)
    assert host_listeners["accepted"] == []


def test_proxy_is_gone_after_a_timeout(
        tmp_path: Path, upstream: int, proxy_command: tuple[str, ...]) -> None:
    grant = grant_for(tmp_path, upstream)
    seen: list[list[int]] = []

    def watch() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not seen:
            if pids := proxy_pids(grant.ledger):  # type: ignore[arg-type]
                seen.append(pids)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    result, _ = run(tmp_path, ["sleep", "60"], network=grant, timeout_s=2.0)
    watcher.join()
    assert result.timed_out
    assert seen, "the proxy never ran"
    assert proxy_pids(grant.ledger) == []  # type: ignore[arg-type]
    assert all(not Path(f"/proc/{pid}").exists() for pid in seen[0])


EXECUTOR = r'''
import sys
from pathlib import Path
from agentos_tasks.proc import run_confined
from agentos_tasks.sandbox.spec import ConfinedSpec, NetworkGrant
base = Path(sys.argv[1])
grant = NetworkGrant("proxy", ("model.test:9",), rule_id="tools[0]", step="s1",
                     ledger=base / "run" / "network.jsonl")
spec = ConfinedSpec(worktree=base / "wt", readonly_paths=(), env={"PATH": sys.argv[2]},
                    network=grant, isolation="required", timeout_s=120, output_limit=4096,
                    max_file_bytes=None)
run_confined(["sleep", "120"], spec, base / "out.log")
'''


def test_proxy_dies_with_a_killed_executor(tmp_path: Path,
                                           proxy_command: tuple[str, ...]) -> None:
    (tmp_path / "wt").mkdir()
    ledger = tmp_path / "run" / "network.jsonl"
    executor = subprocess.Popen([PY, "-c", EXECUTOR, str(tmp_path), HOST_PATH],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        # the sandbox runs (its bwrap binds the worktree): the proxy was ready before it
        while not host_processes_with(str(tmp_path / "wt")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy_pids(ledger), "the proxy is not running while the step runs"
        executor.kill()  # SIGKILL: no finally of run_confined runs
        executor.wait(10)
        deadline = time.monotonic() + 10
        while proxy_pids(ledger) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy_pids(ledger) == []
        # the next executor's first proxy sweeps the dead one's private dir
        left = [d for d in Path(tempfile.gettempdir()).glob(f"agentos-net-{executor.pid}-*")]
        assert left, "the killed executor left no proxy dir (did it run a proxy at all?)"
        proc._swept.clear()
        run(tmp_path, ["true"], network=grant_for(tmp_path, 9))
        assert [d for d in left if d.exists()] == []
    finally:
        if executor.poll() is None:
            executor.kill()
            executor.wait()


def test_proxy_that_never_gets_ready_fails_the_step_clearly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "broken_proxy.py"
    script.write_text("import sys\nsys.stderr.write('no upstream for you\\n')\nsys.exit(3)\n")
    monkeypatch.setattr(proc, "PROXY_COMMAND", (PY, "-I", str(script)))
    grant = grant_for(tmp_path, 9)
    with pytest.raises(proc.AgentosError) as caught:
        run(tmp_path, ["true"], network=grant)
    assert "exited (3) before it was ready" in caught.value.message
    assert "no upstream for you" in caught.value.message
    assert proxy_pids(grant.ledger) == []  # type: ignore[arg-type]


def test_proxy_mode_needs_a_ledger_outside_the_worktree(
        tmp_path: Path, proxy_command: tuple[str, ...]) -> None:
    with pytest.raises(proc.AgentosError, match="needs a ledger"):
        run(tmp_path, ["true"], network=NetworkGrant("proxy", ("a.test",), rule_id="r"))
    inside = NetworkGrant("proxy", ("a.test",), rule_id="r", ledger=tmp_path / "wt" / "l.jsonl")
    with pytest.raises(proc.AgentosError, match="inside the worktree"):
        run(tmp_path, ["true"], network=inside)


# --- secrets ---------------------------------------------------------------------------

SECRET_PROBE = r'''
import os, sys, time
print("VALUE", os.environ.get("AGENT_TOKEN"))
sys.stdout.flush()
time.sleep(float(sys.argv[1]))
'''


@pytest.mark.parametrize("backend", ["bwrap", "none"])
def test_secret_reaches_the_program_only_through_its_environment(
        tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    if backend == "none":
        monkeypatch.setenv(SANDBOX_ENV_VAR, "none")
    env = {"PATH": HOST_PATH, "LANG": "C.UTF-8", "AGENT_TOKEN": canary}
    in_cmdlines: list[list[int]] = []
    done = threading.Event()

    def scan() -> None:
        while not done.is_set():
            if found := host_processes_with(canary):
                in_cmdlines.append(found)
            time.sleep(0.02)

    scanner = threading.Thread(target=scan)
    scanner.start()
    try:
        result, out = run(tmp_path, [*py(SECRET_PROBE), "1.5"], env=env,
                          secret_env=("AGENT_TOKEN",),
                          isolation="best-effort" if backend == "none" else "required")
    finally:
        done.set()
        scanner.join()
    assert result.backend == backend
    assert result.exit_code == 0, out
    assert f"VALUE {canary}" in out
    assert not any(canary in arg for arg in result.wrapper_argv)
    assert in_cmdlines == []


def test_non_secret_variables_stay_visible_and_nothing_of_the_host_leaks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOST_ONLY_VARIABLE", "host-value")
    env = {"PATH": HOST_PATH, "LANG": "C.UTF-8", "AGENT_TOKEN": "s3cret", "VISIBLE": "yes"}
    result, out = run(tmp_path, py("import json, os; print(json.dumps(sorted(os.environ)))"), env=env,
                      secret_env=("AGENT_TOKEN",))
    assert result.exit_code == 0, out
    names = json.loads(out.strip().splitlines()[-1])
    assert set(names) == {"PATH", "LANG", "AGENT_TOKEN", "VISIBLE", "PWD"}, names
    joined = " ".join(result.wrapper_argv)
    assert "--setenv VISIBLE yes" in joined and "s3cret" not in joined
    assert "--clearenv" not in result.wrapper_argv


def test_secret_names_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="LD_PRELOAD"):
        secret_environ(make_spec(tmp_path, env={"LD_PRELOAD": "x"}, secret_env=("LD_PRELOAD",)))
    with pytest.raises(ValueError, match="not in env"):
        secret_environ(make_spec(tmp_path, secret_env=("MISSING",)))
    assert secret_environ(make_spec(tmp_path, env={"A": "1", "K": "v"}, secret_env=("K",))) \
        == {"K": "v"}


# --- masked entries --------------------------------------------------------------------

def test_masked_dir_and_file_are_empty_and_read_only(tmp_path: Path) -> None:
    worktree = tmp_path / "wt"
    (worktree / ".claude").mkdir(parents=True)
    (worktree / ".claude" / "settings.json").write_text('{"hooks": "evil"}')
    (worktree / "CLAUDE.md").write_text("obey the repository")
    (worktree / "kept.txt").write_text("visible")
    script = ("ls -A .claude; cat CLAUDE.md; echo; cat kept.txt; echo;"
              "touch .claude/new 2>/dev/null && echo WROTE-DIR;"
              "echo x > CLAUDE.md 2>/dev/null && echo WROTE-FILE; true")
    result, out = run(tmp_path, ["sh", "-c", script], masked=(
        worktree / ".claude", worktree / "CLAUDE.md", worktree / ".codex"))
    assert result.exit_code == 0, out
    assert "settings.json" not in out and "obey" not in out and "visible" in out
    assert "WROTE" not in out
    assert (worktree / ".claude" / "settings.json").read_text() == '{"hooks": "evil"}'
    assert not (worktree / ".claude" / "new").exists()


@pytest.mark.parametrize("kind", ["symlink", "fifo", "outside"])
def test_unmaskable_entries_are_refused(tmp_path: Path, kind: str) -> None:
    worktree = tmp_path / "wt"
    worktree.mkdir()
    target = worktree / ".opencode"
    if kind == "symlink":
        target.symlink_to(tmp_path)
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        target = tmp_path / "elsewhere"
    with pytest.raises(ValueError, match=str(target)):
        mask_plan((target,), worktree)
    with pytest.raises(ValueError, match=str(target)):
        run(tmp_path, ["true"], masked=(target,))


def test_mask_below_a_symlinked_dir_is_refused(tmp_path: Path) -> None:
    worktree = tmp_path / "wt"
    worktree.mkdir()
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / ".claude").mkdir()
    (worktree / "sub").symlink_to(tmp_path / "real")
    with pytest.raises(ValueError, match="symlink"):
        mask_plan((worktree / "sub" / ".claude",), worktree)


# --- limits ----------------------------------------------------------------------------

LIMITS = ("import resource; print('AS', resource.getrlimit(resource.RLIMIT_AS)[0],"
          " 'FSIZE', resource.getrlimit(resource.RLIMIT_FSIZE)[0])")


def _limits(out: str) -> tuple[int, int]:
    words = out.split()
    return int(words[words.index("AS") + 1]), int(words[words.index("FSIZE") + 1])


def test_memory_is_bounded_by_the_cgroup_not_rlimit_as(tmp_path: Path) -> None:
    parent = cgroups.find_parent()
    result, out = run(tmp_path, py(LIMITS), memory_bytes=1 << 30)
    assert result.exit_code == 0, out
    address_space, _ = _limits(out)
    if parent is not None and (parent.memory or parent.memory_v1 is not None):
        version = "v2 memory.max" if parent.memory else "v1 memory.limit_in_bytes"
        assert f"memory: cgroup {version}={1 << 30}" in result.notes
        assert address_space == resource.RLIM_INFINITY
    else:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail("CI=true: this machine should give the executor a memory cgroup")
        assert any(n.startswith(f"memory: RLIMIT_AS={1 << 30} (fallback") for n in result.notes)
        assert address_space == 1 << 30


def memory_cgroup_or_skip() -> cgroups.CgroupParent:
    """The executor's cgroup parent with a memory controller; skip without (fail under
    CI=true: CI's machine has one)."""
    parent = cgroups.find_parent()
    if parent is None or not (parent.memory or parent.memory_v1 is not None):
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail("CI=true: this machine should give the executor a memory cgroup")
        pytest.skip("no cgroup memory controller here (the RLIMIT_AS fallback is tested)")
    return parent


def test_memory_cgroup_limit_is_enforced(tmp_path: Path) -> None:
    memory_cgroup_or_skip()
    grab = "b = bytearray(512 << 20); b[::4096] = b'x' * len(b[::4096]); print('SURVIVED')"
    result, out = run(tmp_path, py(grab), memory_bytes=128 << 20)
    assert "SURVIVED" not in out
    assert result.exit_code != 0


def test_file_size_limit_only_when_asked(tmp_path: Path) -> None:
    result, out = run(tmp_path, py(LIMITS), max_file_bytes=4096)
    assert _limits(out)[1] == 4096 and "file size: RLIMIT_FSIZE=4096" in result.notes
    result, out = run(tmp_path, py(LIMITS), max_file_bytes=None)
    assert _limits(out)[1] == resource.RLIM_INFINITY
    assert not any(n.startswith("file size") for n in result.notes)


def test_a_jit_style_address_space_reservation_works(tmp_path: Path) -> None:
    """V8 and Go reserve far more address space than they use: with the memory bounded
    by the cgroup, a 16 GiB untouched reservation must succeed."""
    memory_cgroup_or_skip()
    code = ("import mmap; m = mmap.mmap(-1, 16 << 30, flags=mmap.MAP_PRIVATE | "
            "mmap.MAP_ANONYMOUS | getattr(mmap, 'MAP_NORESERVE', 0), prot=mmap.PROT_READ);"
            " print('RESERVED')")
    result, out = run(tmp_path, py(code), memory_bytes=256 << 20)
    assert result.exit_code == 0 and "RESERVED" in out, out


def test_guard_argv_names_the_memory_hierarchy_too() -> None:
    parent = cgroups.find_parent()
    if parent is None or parent.memory_v1 is None:
        pytest.skip("no separate v1 memory hierarchy here")
    proc._ensure_guard(parent)
    guard = proc._guards[os.getpid()]
    assert str(parent.memory_v1) in guard.args  # type: ignore[operator]
    assert guard.poll() is None
    assert subprocess.run([PY, "-I", "-S", cgroups.__file__, "watch"],
                          capture_output=True).returncode == 2


def test_a_proxy_that_must_be_killed_fails_the_step(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review finding: a proxy that had to be SIGKILLed was only noted, though its ledger
    may lack entries; the step fails instead."""
    script = tmp_path / "stubborn_proxy.py"
    script.write_text(
        "import signal, socket, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "path = sys.argv[sys.argv.index('--socket') + 1]\n"
        "s = socket.socket(socket.AF_UNIX); s.bind(path); s.listen(1)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n")
    monkeypatch.setattr(proc, "PROXY_COMMAND", (PY, "-I", str(script)))
    monkeypatch.setattr(proc, "_PROXY_STOP_S", 0.5)
    grant = grant_for(tmp_path, 9)
    with pytest.raises(proc.AgentosError) as caught:
        run(tmp_path, ["true"], network=grant)
    assert "ledger may be incomplete" in caught.value.message
    assert proxy_pids(grant.ledger) == []  # type: ignore[arg-type]
