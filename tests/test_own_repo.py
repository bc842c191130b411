"""A request against your own repository, run from anywhere (issue 14).

`agentos run REQUEST.yaml` from a directory outside the checkout and outside the target:
the evidence goes to $XDG_STATE_HOME/agentos-tasks/runs/<repo name>-<8 hex of its path>/
<run id>, never into the target repository or the current directory; the printed next
commands (`agentos gates`, `agentos sign`) work as printed; the doit form (`doit -f`)
from inside the repository finds the same evidence.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
from pathlib import Path

from runutil import DODO, PROJECT, git, write_policy

REQUEST = """\
version: 1
id: first
repo: ./myrepo
branch: main
policy: ./policy.yaml
steps:
  - id: notes
    message: "notes: add"
    write: {path: NOTES.md, content: "n\\n"}
"""


def _env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "AGENTOS_"))}
    return {**env, "XDG_STATE_HOME": str(state), "PYTHONPATH": str(PROJECT)}


def _agentos(cwd: Path, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentos_tasks", *args], cwd=cwd,
                          env=_env(state), capture_output=True, text=True, timeout=120)


def _printed(stdout: str, key: str) -> list[str]:
    line = next(line for line in stdout.splitlines() if line.startswith(f"{key}:"))
    return shlex.split(line.split(":", 1)[1])


def _files(path: Path) -> set[str]:
    return {p.relative_to(path).as_posix() for p in path.rglob("*")
            if ".git" not in p.relative_to(path).parts}


def test_agentos_run_from_anywhere_keeps_evidence_in_the_state_dir(tmp_path: Path) -> None:
    project, cwd, state = tmp_path / "project", tmp_path / "somewhere", tmp_path / "state"
    for d in (project, cwd, state):
        d.mkdir()
    repo = project / "myrepo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("# mine\n")
    git(repo, "add", "README.md")
    git(repo, "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-q", "-m", "initial")
    write_policy(project / "policy.yaml")
    (project / "request.yaml").write_text(REQUEST)
    before = _files(repo)

    proc = _agentos(cwd, state, "run", str(project / "request.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tag = hashlib.sha256(str(repo.resolve()).encode()).hexdigest()[:8]
    outputs = state / "agentos-tasks" / "runs" / f"myrepo-{tag}"
    run_dir = outputs / "first"
    assert (run_dir / "audit" / "run_tape.jsonl").is_file()
    assert f"evidence: {run_dir}" in proc.stdout
    assert git(repo, "log", "-1", "--format=%s", "main") == "notes: add"
    assert git(repo, "status", "--porcelain", "--ignored") == ""
    assert _files(repo) == before | {"NOTES.md"}  # the change, and no evidence
    assert list(cwd.iterdir()) == [] and not (project / "outputs").exists()

    gates = _printed(proc.stdout, "next")
    assert gates[:2] == ["agentos", "gates"]
    shown = _agentos(cwd, state, *gates[1:])
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert (run_dir / "reports" / "gates.json").is_file()
    assert _agentos(cwd, state, "keygen").returncode == 0
    sign = _printed(proc.stdout, "then")
    assert sign[:2] == ["agentos", "sign"]
    signed = _agentos(cwd, state, *sign[1:])
    assert signed.returncode == 0, signed.stdout + signed.stderr
    assert (run_dir / "signature" / "envelope.dsse.json").is_file()
    assert sorted(p.name for p in cwd.iterdir()) == ["agentos.key", "agentos.pub", "agentos.pub.pem"]

    # the doit form from inside the repository: the same evidence, not ./outputs in the repo
    again = subprocess.run([sys.executable, "-m", "doit", "-f", str(DODO), "run",
                            "request=../request.yaml"], cwd=repo, env=_env(state),
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"evidence: {run_dir}" in again.stdout
    assert "(up to date)" in again.stdout
    assert _files(repo) == before | {"NOTES.md"}


def test_agentos_run_of_a_bad_request_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (tmp_path / "request.yaml").write_text(REQUEST.replace("write: {path", "write: {paht"))
    proc = _agentos(tmp_path, state, "run", "request.yaml")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{tmp_path / 'request.yaml'}:" in proc.stderr and "Traceback" not in proc.stderr
    assert not state.exists()
