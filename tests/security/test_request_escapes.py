"""Escape attempts as real requests: `run:` steps through doit + the executor + bwrap.

The request is executed with `python -m doit -f dodo.py run request=... outputs=...` under a
permissive policy that still says `isolation: required`. Each attempt's log under
outputs/<run>/logs/<step>.out proves it ran; the host and the target branch are unchanged.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from .conftest import requires_bwrap

pytestmark = [pytest.mark.security, requires_bwrap]

PROJECT = Path(__file__).resolve().parents[2]
DODO = PROJECT / "dodo.py"

ATTEMPT = (
    "def attempt(name, action):\n"
    "    print('ATTEMPT', name, flush=True)\n"
    "    try:\n"
    "        action()\n"
    "    except Exception as exc:\n"
    "        print('BLOCKED', name, type(exc).__name__, flush=True)\n"
    "    else:\n"
    "        print('ESCAPED', name, flush=True)\n"
)


def git(repo: Path, *args: str) -> str:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(repo.parent),
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


def py_step(step_id: str, code: str) -> dict[str, object]:
    return {"id": step_id, "run": ["python3", "-c", ATTEMPT + code]}


@pytest.mark.skipif(not DODO.is_file(), reason="executor (dodo.py) not present")
def test_escape_attempts_as_run_steps(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("hello\n")
    git(repo, "add", "README.md")
    git(repo, "commit", "-q", "-m", "init")
    head_before = git(repo, "rev-parse", "main")
    gitdir = repo / ".git"
    config_before = (gitdir / "config").read_bytes()
    host = tmp_path / "host"
    host.mkdir()
    (host / "target.txt").write_text("original\n")
    canary = f"canary-{uuid.uuid4().hex}"

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]

    def write(path: str) -> str:
        return f"lambda: open({path!r}, 'w').write('pwned')"

    steps = [
        py_step("abs_write", f"attempt('abs', {write(str(host / 'new.txt'))})\n"
                             f"attempt('root', {write('/root/agentos-req-escape')})"),
        py_step("symlink_write",
                "import os\n"
                f"os.symlink({str(host / 'target.txt')!r}, 'link')\n"
                f"attempt('symlink', {write('link')})\n"
                "os.remove('link')"),
        # the git dir a step sees (the run's private one, named by .git) is read-only; the
        # target's own git dir is not in the sandbox at all (checked on the host below)
        py_step("gitdir_write",
                "own = open('.git').read().split(': ', 1)[1].strip()\n"
                "attempt('hook', lambda: open(own + '/hooks/pre-commit', 'w').write('x'))\n"
                "attempt('config', lambda: open(own + '/config', 'w').write('x'))\n"
                "attempt('ref', lambda: open(own + '/refs/heads/main', 'w').write('x'))\n"
                f"attempt('target', {write(str(gitdir / 'hooks' / 'pre-commit'))})"),
        py_step("environ_read",
                "blob = open('/proc/1/environ', 'rb').read()\n"
                "blob += open('/proc/self/environ', 'rb').read()\n"
                "print('ENV-READ', b'PATH=' in blob)\n"
                f"print('CANARY', {canary!r}.encode() in blob)"),
        py_step("tcp_connect",
                "import socket\n"
                f"attempt('tcp', lambda: socket.create_connection(('127.0.0.1', {port}), 2))"),
        py_step("daemon",
                "import os, time\n"
                "if os.fork() == 0:\n"
                "    os.setsid()\n"
                "    if os.fork() == 0:\n"
                "        time.sleep(1)\n"
                "        open('daemon.txt', 'w').write('alive')\n"
                "    os._exit(0)\n"
                "print('ATTEMPT daemon', flush=True)"),
        py_step("after_daemon",
                "import os, time\n"
                "time.sleep(1.5)\n"
                "print('LISTING', sorted(os.listdir('.')))"),
    ]
    request = {"version": 1, "id": "escapes", "repo": str(repo), "branch": "main",
               "steps": steps}
    policy = {
        "version": 1, "id": "permissive-sandboxed", "operations": ["run"],
        "paths": {"allow": ["**"], "deny": [".git/**"]},
        "commands": [{"argv": ["python3"]}], "network": False,
        "isolation": "required", "env": ["PATH", "LANG"],
        "limits": {"step_seconds": 30},
    }
    request_path, policy_path = tmp_path / "request.yaml", tmp_path / "policy.yaml"
    request_path.write_text(json.dumps(request))  # JSON is YAML
    policy_path.write_text(json.dumps(policy))
    outputs = tmp_path / "outputs"
    env = {**os.environ, "AGENTOS_CANARY": canary, "PYTHONPATH": str(PROJECT)}
    env.pop("AGENTOS_SANDBOX", None)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "doit", "-f", str(DODO), "run", f"request={request_path}",
             f"policy={policy_path}", f"outputs={outputs}"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, check=False)
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()
    assert done.returncode == 0, done.stdout + done.stderr
    logs = outputs / "escapes" / "logs"
    for step in steps:  # every attempt really ran in bwrap, as recorded by the executor
        record = (outputs / "escapes" / "steps" / f"{step['id']}.json").read_text()
        assert '"backend": "bwrap"' in record, record

    def log(step_id: str) -> str:
        return (logs / f"{step_id}.out").read_text()

    for step_id, names in {"abs_write": ["abs", "root"], "symlink_write": ["symlink"],
                           "gitdir_write": ["hook", "config", "ref", "target"],
                           "tcp_connect": ["tcp"]}.items():
        text = log(step_id)
        for name in names:
            assert f"ATTEMPT {name}\n" in text and f"BLOCKED {name}" in text, text
        assert "ESCAPED" not in text
    assert "ENV-READ True" in log("environ_read") and "CANARY False" in log("environ_read")
    assert "ATTEMPT daemon" in log("daemon")
    assert "LISTING" in log("after_daemon") and "daemon.txt" not in log("after_daemon")
    # the host is unchanged
    assert not (host / "new.txt").exists() and (host / "target.txt").read_text() == "original\n"
    assert not Path("/root/agentos-req-escape").exists()
    assert (gitdir / "config").read_bytes() == config_before
    assert not (gitdir / "hooks" / "pre-commit").exists()
    # no step changed anything, so the target branch did not move
    assert git(repo, "rev-parse", "main") == head_before
    assert "daemon.txt" not in git(repo, "ls-tree", "-r", "--name-only", "main")
