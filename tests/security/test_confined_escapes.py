"""Escape attempts against run_confined with bwrap (isolation: required).

Each attempt really runs inside the sandbox (its output proves it ran), fails, and the
host is checked to be unchanged afterwards. A missing bwrap skips locally, fails under CI.
"""

from __future__ import annotations

import hashlib
import os
import socket
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from agentos_tasks.proc import run_confined
from agentos_tasks.sandbox.spec import NO_NETWORK, ConfinedResult, ConfinedSpec

from .conftest import host_processes_with, make_git_worktree, requires_bwrap

pytestmark = [pytest.mark.security, requires_bwrap]

HOST_PATH = os.environ.get("PATH", "/usr/bin:/bin")


def confined_python(worktree: Path, code: str, *, log: Path, **overrides: object
                    ) -> tuple[ConfinedResult, str]:
    """Run a Python snippet confined with a strict spec; returns (result, log text)."""
    values: dict[str, object] = {
        "worktree": worktree, "readonly_paths": (),
        "env": {"PATH": HOST_PATH, "LANG": "C.UTF-8"}, "network": NO_NETWORK,
        "isolation": "required", "timeout_s": 20.0, "output_limit": 1 << 20,
        "max_file_bytes": 1 << 20, "memory_bytes": 512 << 20, "max_processes": 64,
    }
    values.update(overrides)
    result = run_confined(["python3", "-c", textwrap.dedent(code)],
                          ConfinedSpec(**values), log)  # type: ignore[arg-type]
    assert result.backend == "bwrap"
    return result, log.read_text(errors="replace")


def tree_digest(root: Path) -> str:
    """Digest of every path, mode and content under `root` (the host side, unchanged?)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            digest.update(oct(path.stat().st_mode).encode() + path.read_bytes())
    return digest.hexdigest()


# Each snippet prints ATTEMPT <name> first, then BLOCKED <name> <error> or ESCAPED <name>.
ATTEMPT = """
def attempt(name, action):
    print("ATTEMPT", name, flush=True)
    try:
        action()
    except Exception as exc:
        print("BLOCKED", name, type(exc).__name__, exc, flush=True)
    else:
        print("ESCAPED", name, flush=True)
"""


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    host = tmp_path / "host"
    worktree = tmp_path / "wt"
    host.mkdir()
    worktree.mkdir()
    (host / "target.txt").write_text("original\n")
    return {"host": host, "wt": worktree, "log": tmp_path / "logs" / "step.out"}


def test_writes_outside_the_worktree_do_not_reach_the_host(layout: dict[str, Path]) -> None:
    host, worktree = layout["host"], layout["wt"]
    root_victim = Path(f"/root/agentos-escape-{uuid.uuid4().hex}")
    (worktree / "link").symlink_to(host / "target.txt")
    before = tree_digest(host)
    code = ATTEMPT + f"""
import os
def write(path):
    with open(path, "w") as f:
        f.write("pwned")
attempt("absolute", lambda: write({str(host / 'new.txt')!r}))
attempt("root-home", lambda: write({str(root_victim)!r}))
attempt("dotdot", lambda: write("../host/target.txt"))
attempt("symlink-write", lambda: write("link"))
attempt("symlink-read", lambda: print(open("link").read()))
attempt("hardlink", lambda: os.link({str(host / 'target.txt')!r}, "hl"))
attempt("etc", lambda: write("/etc/agentos-escape"))
attempt("usr", lambda: write("/usr/local/bin/agentos-escape"))
"""
    result, out = confined_python(worktree, code, log=layout["log"])
    for name in ("absolute", "root-home", "dotdot", "symlink-write", "symlink-read",
                 "hardlink", "etc", "usr"):
        assert f"ATTEMPT {name}\n" in out
        assert f"BLOCKED {name}" in out, out
    assert "ESCAPED" not in out and result.exit_code == 0
    assert tree_digest(host) == before
    assert not root_victim.exists()
    assert not (worktree / "hl").exists()


def test_parent_of_worktree_is_an_empty_private_tmp(layout: dict[str, Path]) -> None:
    """`..` from the worktree lands in the sandbox's private /tmp, never on the host."""
    code = ATTEMPT + """
import os
attempt("list-parent", lambda: print("SIBLINGS", sorted(os.listdir(".."))))
def write_parent():
    with open("../escaped.txt", "w") as f:
        f.write("x")
attempt("write-parent", write_parent)
"""
    _result, out = confined_python(layout["wt"], code, log=layout["log"])
    assert "SIBLINGS ['wt']" in out  # the host dir next to it ("host") is not visible
    assert "ATTEMPT write-parent" in out
    assert not (layout["wt"].parent / "escaped.txt").exists()


def test_secrets_in_home_and_shadow_are_not_readable(
        layout: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".netrc").write_text("machine example.com password hunter2\n")
    monkeypatch.setenv("HOME", str(home))
    code = ATTEMPT + f"""
import os
attempt("home-secret", lambda: print(open({str(home / '.netrc')!r}).read()))
attempt("shadow", lambda: print(open("/etc/shadow").read()))
attempt("ssl-private", lambda: print(os.listdir("/etc/ssl/private")))
print("HOME-LISTING", os.listdir(os.environ["HOME"]))
"""
    env = {"PATH": HOST_PATH, "HOME": str(home)}
    result, out = confined_python(layout["wt"], code, log=layout["log"], env=env)
    for name in ("home-secret", "shadow", "ssl-private"):
        assert f"ATTEMPT {name}" in out and f"BLOCKED {name}" in out, out
    assert "hunter2" not in out and "root:" not in out.split("ATTEMPT shadow")[1][:200]
    assert "HOME-LISTING []" in out  # a private, empty $HOME
    assert result.exit_code == 0


def test_parent_environment_is_not_visible_via_proc(
        layout: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    monkeypatch.setenv("AGENTOS_SECRET_TOKEN", canary)
    code = """
import os
seen = []
for pid in ["1", str(os.getppid()), "self"] + [p for p in os.listdir("/proc") if p.isdigit()]:
    try:
        seen.append(open(f"/proc/{pid}/environ", "rb").read())
        print("READ", pid)
    except OSError as exc:
        print("NOREAD", pid, exc)
blob = b"\\n".join(seen)
print("SECRET-VISIBLE" if b"AGENTOS_SECRET" in blob else "SECRET-ABSENT")
print("PIDS", sorted(p for p in os.listdir("/proc") if p.isdigit()))
"""
    _result, out = confined_python(layout["wt"], code, log=layout["log"])
    assert "READ 1\n" in out and "READ self" in out  # it really looked
    assert "SECRET-ABSENT" in out and canary not in out
    assert "PIDS ['1', '2']" in out  # no host process is visible in the pid namespace


def test_git_dir_is_read_only(tmp_path: Path) -> None:
    repo, worktree = make_git_worktree(tmp_path)
    gitdir = repo / ".git"
    before_repo = tree_digest(gitdir)
    before_dotgit = (worktree / ".git").read_text()
    code = ATTEMPT + f"""
import os
gitdir = {str(gitdir)!r}
def write(path, text="pwned\\n", mode="w"):
    with open(path, mode) as f:
        f.write(text)
def hook():
    write(os.path.join(gitdir, "hooks", "post-checkout"), "#!/bin/sh\\ntouch /tmp/x\\n")
attempt("hook", hook)
attempt("config", lambda: write(os.path.join(gitdir, "config"), "[core]\\nfsmonitor=x\\n", "a"))
attempt("ref", lambda: write(os.path.join(gitdir, "refs", "heads", "main"), "0" * 40))
attempt("worktree-admin", lambda: write(os.path.join(gitdir, "worktrees", "wt", "HEAD")))
attempt("dotgit-file", lambda: write(".git", "gitdir: /tmp/evil\\n"))
attempt("dotgit-remove", lambda: os.remove(".git"))
attempt("link-config", lambda: os.link(os.path.join(gitdir, "config"), "cfg"))
print("READABLE", open(os.path.join(gitdir, "HEAD")).read().strip())
"""
    spec_paths = (gitdir, worktree / ".git")
    result, out = confined_python(worktree, code, log=tmp_path / "step.out",
                                  readonly_paths=spec_paths)
    for name in ("hook", "config", "ref", "worktree-admin", "dotgit-file", "dotgit-remove",
                 "link-config"):
        assert f"ATTEMPT {name}" in out and f"BLOCKED {name}" in out, out
    assert "READABLE ref: refs/heads/main" in out and result.exit_code == 0
    assert tree_digest(gitdir) == before_repo
    assert (worktree / ".git").read_text() == before_dotgit


def test_network_is_unreachable(layout: dict[str, Path]) -> None:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(5)
        tcp.settimeout(0.5)
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(0.5)
        tcp_port, udp_port = tcp.getsockname()[1], udp.getsockname()[1]
        code = ATTEMPT + f"""
import socket
def tcp():
    socket.create_connection(("127.0.0.1", {tcp_port}), timeout=2).sendall(b"leak")
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(5):
        s.sendto(b"leak", ("127.0.0.1", {udp_port}))
    raise OSError("sent into the sandbox's own loopback")
def dns():
    socket.getaddrinfo("example.com", 443)
attempt("tcp", tcp)
attempt("udp", udp)
attempt("dns", dns)
attempt("outside", lambda: socket.create_connection(("1.1.1.1", 53), timeout=2))
"""
        _result, out = confined_python(layout["wt"], code, log=layout["log"])
        for name in ("tcp", "udp", "dns", "outside"):
            assert f"ATTEMPT {name}" in out and f"BLOCKED {name}" in out, out
        with pytest.raises(TimeoutError):
            tcp.accept()
        with pytest.raises(TimeoutError):
            udp.recvfrom(100)
    finally:
        tcp.close()
        udp.close()


def test_setsid_and_double_fork_do_not_survive(layout: dict[str, Path]) -> None:
    token = f"11.{uuid.uuid4().int % 10**6:06d}"
    marker = layout["wt"] / "survivor"
    code = f"""
import os, subprocess, time
subprocess.Popen(["setsid", "sh", "-c", "sleep 1; echo x > {marker}; sleep {token}"])
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execvp("sh", ["sh", "-c", "sleep 1; echo y >> {marker}; sleep {token}"])
    os._exit(0)
print("SPAWNED", flush=True)
"""
    result, out = confined_python(layout["wt"], code, log=layout["log"])
    assert "SPAWNED" in out and result.exit_code == 0
    assert host_processes_with(token) == []
    time.sleep(1.5)
    assert not marker.exists() and host_processes_with(token) == []


def test_fork_bomb_is_contained(layout: dict[str, Path]) -> None:
    """A bounded bomb (binary tree, <= 510 forks): the limit must stop it far earlier."""
    token = f"12.{uuid.uuid4().int % 10**6:06d}"
    code = f"""
import os, sys, time
made = failed = 0
depth = 0
while depth < 9:
    try:
        pid = os.fork()
    except OSError:
        failed += 1
        break
    if pid == 0:
        depth += 1
        made = failed = 0
        continue
    made += 1
    try:
        if os.fork() == 0:
            depth += 1
            made = failed = 0
            continue
        made += 1
    except OSError:
        failed += 1
    break
if depth == 0:
    time.sleep(1.5)  # let the tree grow, then count it
    print("TASKS", len([p for p in os.listdir("/proc") if p.isdigit()]), flush=True)
    os._exit(0)
time.sleep(30)  # token {token}
"""
    started = time.monotonic()
    result, out = confined_python(layout["wt"], code, log=layout["log"], max_processes=20,
                                  timeout_s=15)
    assert "TASKS" in out, out
    tasks = int(out.split("TASKS")[1].split()[0])
    assert tasks <= 20 + 2  # the program's processes plus bwrap's init (and python)
    assert not result.timed_out and time.monotonic() - started < 10
    assert host_processes_with(token) == []
    assert any("pids.max" in note or "RLIMIT_NPROC" in note for note in result.notes)


def test_file_beyond_max_file_bytes_is_stopped(layout: dict[str, Path]) -> None:
    code = """
import signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # turn the kill into an error we can print
print("ATTEMPT big-file", flush=True)
try:
    with open("big.bin", "wb") as f:
        for _ in range(64):
            f.write(b"x" * 65536)
            f.flush()
    print("ESCAPED big-file")
except OSError as exc:
    print("BLOCKED big-file", exc)
"""
    result, out = confined_python(layout["wt"], code, log=layout["log"],
                                  max_file_bytes=256 * 1024)
    assert "ATTEMPT big-file" in out and "BLOCKED big-file" in out, out
    assert (layout["wt"] / "big.bin").stat().st_size <= 256 * 1024
    assert result.exit_code == 0
    # with the default SIGXFSZ action the kernel kills the writer (bwrap reports 128+25)
    kill_code = ("import signal; signal.signal(signal.SIGXFSZ, signal.SIG_DFL); "
                 "open('b2', 'wb').write(b'x' * 1048576)")
    result, _ = confined_python(layout["wt"], kill_code, log=layout["log"], max_file_bytes=4096)
    assert result.exit_code == 128 + 25
    assert (layout["wt"] / "b2").stat().st_size <= 4096


def test_memory_beyond_memory_bytes_is_refused(layout: dict[str, Path]) -> None:
    """1 GiB touched under a 256 MiB bound: the run's cgroup kills it (or, where only the
    address-space fallback applies, the allocation fails); it never gets the memory."""
    code = """
print("ATTEMPT memory", flush=True)
try:
    block = b"x" * (1024 * 1024 * 1024)  # every page written
    print("ESCAPED memory", len(block))
except MemoryError:
    print("BLOCKED memory")
"""
    result, out = confined_python(layout["wt"], code, log=layout["log"],
                                  memory_bytes=256 * 1024 * 1024)
    assert "ATTEMPT memory" in out and "ESCAPED" not in out, out
    killed = result.exit_code in (137, -9)
    assert killed or ("BLOCKED memory" in out and result.exit_code == 0), (result, out)
    assert any(note.startswith("memory: ") for note in result.notes), result.notes


def test_no_capabilities_no_nested_namespaces_no_remount(layout: dict[str, Path]) -> None:
    code = ATTEMPT + """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def unshare_user():
    if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
def remount():
    if libc.mount(b"none", b"/usr", None, 32 | 1 | 4096, None) != 0:  # REMOUNT|RDONLY|BIND
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
attempt("unshare-user", unshare_user)
attempt("remount", remount)
attempt("chroot", lambda: os.chroot("/tmp"))
print("CAPS", [l for l in open("/proc/self/status") if l.startswith("CapEff")][0].split()[1])
"""
    _result, out = confined_python(layout["wt"], code, log=layout["log"])
    for name in ("unshare-user", "remount", "chroot"):
        assert f"ATTEMPT {name}" in out and f"BLOCKED {name}" in out, out
    assert "CAPS 0000000000000000" in out
