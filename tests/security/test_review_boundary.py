"""Security review of the claim "the boundary holds".

Each test drives the real executor or gates (doit through tests/runutil.py, real git, real
bwrap) with inputs an attacker controls — the target repository's git dir, the request and
policy files, a received run directory, a tool step with network — and asserts the SECURE
outcome. They fail until the product is fixed.

Every subprocess is bounded (timeout, and an address-space limit where a failure mode is
memory growth), so a hang or a blow-up fails the test instead of blocking the suite.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from runutil import DODO, doit, write_policy, write_request

from .conftest import requires_bwrap
from .test_adversarial import CLEAN_GIT_ENV, host_git, make_repo

pytestmark = [pytest.mark.security, requires_bwrap]

WRITE_DOC = {"id": "s1", "write": {"path": "docs/a.md", "content": "a\n"}}


def bounded(argv: list[str], cwd: Path, *, seconds: float = 60,
            memory_bytes: int | None = None) -> subprocess.CompletedProcess[str] | None:
    """Run `argv` in its own session; None when it had to be killed after `seconds`.
    `memory_bytes` caps its address space (and its children's), so an unbounded
    allocation fails there instead of exhausting the machine."""
    def limit() -> None:
        if memory_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    proc = subprocess.Popen(argv, cwd=cwd, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=limit)  # noqa: PLW1509 - only setrlimit
    try:
        out, err = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def doit_bounded(tmp: Path, *args: str, seconds: float = 60,
                 memory_bytes: int | None = None) -> subprocess.CompletedProcess[str] | None:
    if not any(a.startswith("outputs=") for a in args):
        args = (*args, "outputs=out")
    return bounded([sys.executable, "-m", "doit", "-f", str(DODO), *args], tmp,
                   seconds=seconds, memory_bytes=memory_bytes)


def alias_bomb(levels: int = 9, width: int = 10) -> str:
    """YAML whose anchors/aliases expand to width**levels scalars (a billion laughs)."""
    lines = [f"x0: &a0 [{', '.join(['lol'] * width)}]"]
    for level in range(1, levels):
        lines.append(f"x{level}: &a{level} [{', '.join([f'*a{level - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- 1: target git dir


def test_symlinked_reflog_in_the_target_does_not_make_landing_write_outside(
        tmp_path: Path) -> None:
    """HOLE. Landing moves the branch with `git update-ref -m ...` in the target; git appends
    the reflog entry to `logs/refs/heads/<branch>` and `logs/HEAD` and follows symlinks
    there (creating the file when absent). A repository whose reflogs are symlinks makes
    the executor (root, here) create or append to any host file."""
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n"})
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / "bashrc"
    precious.write_text("# the operator's shell profile\n")
    created = outside / "sudoers.d-agentos"
    logs = repo / ".git" / "logs"
    (logs / "refs" / "heads" / "main").unlink()
    (logs / "HEAD").unlink()
    (logs / "refs" / "heads" / "main").symlink_to(precious)
    (logs / "HEAD").symlink_to(created)
    write_request(tmp_path, [WRITE_DOC], init_repo=False)
    doit_bounded(tmp_path, "run", "request=req.yaml", seconds=120)
    assert precious.read_text() == "# the operator's shell profile\n", \
        f"landing appended to a host file outside the repository: {precious.read_text()!r}"
    assert not created.exists(), \
        f"landing created a host file outside the repository: {created.read_text()!r}"


def test_symlinked_refs_dir_in_the_target_does_not_make_landing_create_files_outside(
        tmp_path: Path) -> None:
    """HOLE. With `refs/heads` a symlink to another directory (the branch itself kept in
    packed-refs), `update-ref` writes the new loose ref through it: a file named after
    the branch, holding a commit id, in any host directory (e.g. /etc/nologin when the
    repository's HEAD names a branch `nologin` and `refs/heads -> /etc`)."""
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n"})
    host_git(repo, "pack-refs", "--all")
    outside = tmp_path / "etc"
    outside.mkdir()
    heads = repo / ".git" / "refs" / "heads"
    shutil.rmtree(heads)
    heads.symlink_to(outside)
    shutil.rmtree(repo / ".git" / "logs")
    write_request(tmp_path, [WRITE_DOC], init_repo=False)
    doit_bounded(tmp_path, "run", "request=req.yaml", seconds=120)
    assert sorted(p.name for p in outside.iterdir()) == [], \
        "landing wrote a ref file into a host directory outside the repository"


def test_symlinked_pack_dir_in_the_target_does_not_make_landing_write_outside(
        tmp_path: Path) -> None:
    """HOLE, same class: landing.pack_into runs `pack-objects ... <objects>/pack/pack`, so
    a repository whose `objects/pack` is a symlink gets the run's pack and index written
    into whatever host directory it names."""
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n"})
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    pack = repo / ".git" / "objects" / "pack"
    pack.rmdir()
    pack.symlink_to(outside)
    write_request(tmp_path, [WRITE_DOC], init_repo=False)
    doit_bounded(tmp_path, "run", "request=req.yaml", seconds=120)
    assert sorted(p.name for p in outside.iterdir()) == [], \
        "landing wrote pack files into a host directory outside the repository"


def test_file_named_by_the_target_config_does_not_hang_gates(tmp_path: Path) -> None:
    """HOLE. Gates run `git log -p` (R2), `git apply --numstat` (EX-A) and `git
    format-patch` (EX-D) in the target with its own config. `core.attributesFile` (like
    `core.excludesFile`, `diff.orderFile`) is not blanked, so git opens whatever file the
    repository names: a FIFO blocks each call for proc.HOST_TIMEOUT_S (900 s), /dev/zero
    makes git grow without bound until it is out of memory."""
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n"})
    write_request(tmp_path, [WRITE_DOC], init_repo=False)
    doit(tmp_path, "run", "request=req.yaml", check=0)
    fifo = repo / ".git" / "attributes.fifo"
    os.mkfifo(fifo)
    host_git(repo, "config", "core.attributesFile", str(fifo))
    proc = doit_bounded(tmp_path, "gates", "request=req.yaml", seconds=90)
    assert proc is not None, "doit gates hung on a FIFO that the target's config names"
    assert proc.returncode == 0, f"gates failed on a good run:\n{proc.stdout[-2000:]}"


def test_target_config_naming_dev_zero_cannot_exhaust_memory_in_gates(tmp_path: Path) -> None:
    """HOLE, same root cause: `core.attributesFile=/dev/zero` — git reads an endless line.
    Under a 2 GiB address-space cap git dies 'Out of memory' (gates FAIL a good run);
    without a cap it takes the machine's memory."""
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n"})
    write_request(tmp_path, [WRITE_DOC], init_repo=False)
    doit(tmp_path, "run", "request=req.yaml", check=0)
    host_git(repo, "config", "core.attributesFile", "/dev/zero")
    proc = doit_bounded(tmp_path, "gates", "request=req.yaml", seconds=120,
                        memory_bytes=2 << 30)
    assert proc is not None, "doit gates did not finish"
    assert "Out of memory" not in proc.stdout + proc.stderr, proc.stdout[-2000:]
    assert proc.returncode == 0, proc.stdout[-2000:]


# --------------------------------------------------------------------------- 2: network tools


@pytest.fixture
def host_listeners() -> tuple[str, int]:
    """A host-only abstract unix socket and a 127.0.0.1 TCP port, each answering a secret."""
    name = f"agentos-review-{os.getpid()}"
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind("\0" + name)
    unix.listen(8)
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    stop = threading.Event()

    def serve(sock: socket.socket) -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.sendall(b"HOST-ONLY-SECRET\n")

    threads = [threading.Thread(target=serve, args=(s,), daemon=True) for s in (unix, tcp)]
    for thread in threads:
        thread.start()
    yield name, tcp.getsockname()[1]
    stop.set()
    for thread in threads:
        thread.join(2)
    unix.close()
    tcp.close()


@pytest.mark.parametrize("target", ["abstract-unix", "loopback-tcp"])
def test_tool_with_network_cannot_reach_host_only_services(
        tmp_path: Path, host_listeners: tuple[str, int], target: str) -> None:
    """Closed (issue 11). `tools: [{adapter: ..., network: true}]` once ran the agent with
    `--share-net`, in the HOST's network namespace, where it reached every host-local
    service: 127.0.0.1 ports and abstract unix sockets (X11's @/tmp/.X11-unix/X0, D-Bus,
    ...). Now every step has its own namespace with only loopback; a network grant adds
    the bridge to the allowlist proxy, nothing of the host's. The probe must have run
    (its answer is in the worktree) and been refused."""
    name, port = host_listeners
    code = (
        "import socket\n"
        f"target = {target!r}\n"
        "try:\n"
        "    if target == 'abstract-unix':\n"
        "        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        f"        s.connect('\\0' + {name!r})\n"
        "    else:\n"
        f"        s = socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
        "    got = s.recv(100)\n"
        "except OSError as exc:\n"
        "    got = ('refused: %s' % exc.__class__.__name__).encode()\n"
        "open('docs/probe.md', 'wb').write(got)\n"
    )
    # the widest grant there is: any public host through the proxy, still nothing local
    write_policy(tmp_path / "policy.yaml",
                 tools=[{"adapter": "command", "network": "unrestricted"}])
    write_request(tmp_path, [WRITE_DOC, {"id": "s2", "tool": {
        "adapter": "command", "argv": ["python3", "-c", code], "prompt": "probe",
        "paths": ["docs/**"]}}])
    proc = doit_bounded(tmp_path, "run", "request=req.yaml", seconds=120)
    assert proc is not None
    probe = tmp_path / "out" / "r1" / "worktree" / "docs" / "probe.md"
    landed = tmp_path / "repo" / "docs" / "probe.md"
    seen = (landed if landed.exists() else probe).read_bytes() if \
        (landed.exists() or probe.exists()) else b""
    assert b"HOST-ONLY-SECRET" not in seen, \
        f"a network-enabled tool step read a host-only service ({target})"
    assert seen.startswith(b"refused: "), \
        f"the probe did not run to its end: {seen!r}\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}"


# --------------------------------------------------------------------------- 3: hostile YAML


def test_yaml_alias_bomb_in_a_request_fails_fast_and_cleanly(tmp_path: Path) -> None:
    """HOLE. yamlsrc._construct rebuilds every node it reaches, aliases included, with no
    count: 9 levels of 10 aliases are 10**9 nodes. `doit run` spends minutes and dies
    with a MemoryError traceback (or takes the machine's memory) instead of one error."""
    write_request(tmp_path, [WRITE_DOC])
    request = tmp_path / "req.yaml"
    request.write_text(request.read_text() + alias_bomb())
    proc = doit_bounded(tmp_path, "run", "request=req.yaml", seconds=60, memory_bytes=3 << 30)
    assert proc is not None, "doit run did not finish loading a 1 kB request in 60 s"
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-1500:]
    assert proc.returncode != 0


def test_yaml_alias_bomb_in_a_received_run_does_not_hang_gates(tmp_path: Path) -> None:
    """HOLE. A received run directory is untrusted: gates (and `agentos verify`, which runs
    every gate even when the signature fails) load `audit/policy.yaml` with
    yamlsrc.load_with_marks, once per gate. An alias bomb there keeps `doit gates` busy
    for hours (each gate ends in MemoryError) instead of a prompt FAIL."""
    write_request(tmp_path, [WRITE_DOC])
    doit(tmp_path, "run", "request=req.yaml", check=0)
    (tmp_path / "out" / "r1" / "audit" / "policy.yaml").write_text(
        "version: 1\nid: test-permissive\n" + alias_bomb())
    proc = doit_bounded(tmp_path, "gates", "run=r1", seconds=90, memory_bytes=3 << 30)
    assert proc is not None, "doit gates hung on an alias bomb in a received run directory"
    assert proc.returncode != 0
    assert "MemoryError" not in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- 4: robustness


def test_write_below_an_existing_file_fails_cleanly(tmp_path: Path) -> None:
    """HOLE (robustness). `write: {path: README.md/x}` where README.md is a file: policy.
    _refuse_symlinked_parents catches only FileNotFoundError; NotADirectoryError escapes
    run_step as a bare traceback instead of one step error."""
    write_request(tmp_path, [{"id": "s1", "write": {"path": "README.md/x", "content": "a"}}])
    proc = doit_bounded(tmp_path, "run", "request=req.yaml", seconds=120)
    assert proc is not None
    assert proc.returncode != 0
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout[-1500:]


def test_patch_with_a_malformed_quoted_name_is_refused_cleanly(tmp_path: Path) -> None:
    """HOLE (robustness). request.patch_paths unquotes git's C-style names with Python's
    `unicode_escape`; `--- "a/\\x"` raises UnicodeDecodeError out of load_request: a
    traceback (doit exit 3) instead of `request: ... line N` (exit 2)."""
    (tmp_path / "p.diff").write_text(
        'diff --git a/x b/x\n--- "a/\\x"\n+++ b/x\n@@ -0,0 +1 @@\n+a\n')
    write_request(tmp_path, [{"id": "s1", "patch": "p.diff"}])
    proc = doit_bounded(tmp_path, "run", "request=req.yaml", seconds=60)
    assert proc is not None
    assert proc.returncode != 0
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-1500:]


# --------------------------------------------------------------------------- 5: received run


def test_alternates_in_a_received_run_cannot_hang_gates(tmp_path: Path) -> None:
    """HOLE. GateContext.git reads objects from the received run's
    `.state/repo.git/objects` as an alternate; git follows that dir's `info/alternates`
    (relative entries too) into `worktree/`, which check_received_tree does not look into
    (fsutil._NOT_EVIDENCE). A FIFO at `worktree/evil/info/alternates` blocks every git call
    of R2, EX-A, EX-D ... for proc.HOST_TIMEOUT_S (900 s each): `doit gates` and `agentos
    verify` hang for hours instead of failing the run."""
    write_request(tmp_path, [WRITE_DOC])
    doit(tmp_path, "run", "request=req.yaml", check=0)
    run = tmp_path / "out" / "r1"
    alternates = run / ".state" / "repo.git" / "objects" / "info" / "alternates"
    alternates.write_text(alternates.read_text() + "../../../worktree/evil\n")
    (run / "worktree" / "evil" / "info").mkdir(parents=True)
    os.mkfifo(run / "worktree" / "evil" / "info" / "alternates")
    proc = doit_bounded(tmp_path, "gates", "run=r1", seconds=120)
    assert proc is not None, "doit gates hung on a received run directory"


# --------------------------------------------------------------------------- 6: what lands


def test_a_step_cannot_land_an_embedded_bare_repository(tmp_path: Path) -> None:
    """HOLE. "Nested repositories are always refused (paths.git)" covers `.git` components
    and gitlinks only. A step that leaves `docs/x/{HEAD,config,objects/,refs/}` lands a
    directory git takes for a repository of its own (a bare layout): its `config` is
    then the one git uses there, so `core.fsmonitor` runs a program of the step's choice
    on the host as soon as anyone (or a shell prompt) runs `git status` in docs/x of the
    target's checked-out working tree."""
    marker = tmp_path / "fsmonitor-ran"
    plant = (
        "import os\n"
        "os.makedirs('docs/x/objects/info'); os.makedirs('docs/x/refs/heads')\n"
        "open('docs/x/HEAD', 'w').write('ref: refs/heads/main\\n')\n"
        "open('docs/x/config', 'w').write('[core]\\n\\trepositoryformatversion = 0\\n'\n"
        "    '\\tbare = false\\n\\tworktree = ..\\n'\n"
        f"    '\\tfsmonitor = \"touch {marker}; false\"\\n')\n"
        "open('docs/x/objects/info/keep', 'w').write('')\n"
        "open('docs/x/refs/heads/keep', 'w').write('')\n"
    )
    write_request(tmp_path, [{"id": "s1", "run": ["python3", "-c", plant]}])
    doit_bounded(tmp_path, "run", "request=req.yaml", seconds=120)
    repo = tmp_path / "repo"
    landed = host_git(repo, "ls-tree", "-r", "--name-only", "main").splitlines()
    assert "docs/x/config" not in landed, f"an embedded repository landed: {landed}"
    if (repo / "docs" / "x").is_dir():  # what the operator's shell prompt would do there
        subprocess.run(["git", "status"], cwd=repo / "docs" / "x", capture_output=True,
                       env={**CLEAN_GIT_ENV, "HOME": str(tmp_path)}, timeout=30)
    assert not marker.exists(), "a program the step chose ran on the host via landed config"
