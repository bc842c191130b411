"""Helpers for end-to-end tests: write requests/policies into tmp dirs and run doit."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

PROJECT = Path(__file__).resolve().parent.parent
DODO = PROJECT / "dodo.py"

PERMISSIVE_POLICY: dict[str, Any] = {
    "version": 1,
    "id": "test-permissive",
    "operations": ["write", "delete", "patch", "run", "tool"],
    "paths": {"allow": ["**"], "deny": [".git/**", "**/.env", "secrets/**"],
              "executable": ["**"]},
    "commands": [{"id": "python", "argv": [sys.executable]}, {"argv": ["python3"]},
                 {"argv": ["sh"]}, {"argv": ["true"]}, {"argv": ["false"]}],
    "tools": [{"adapter": "command"}],
    "network": False,
    "isolation": "required",
    "limits": {"step_seconds": 30, "max_file_bytes": 16 * 1024 * 1024,
               "max_changed_files": 500, "max_steps": 500, "output_bytes": 65536},
    "env": ["PATH", "LANG"],
}


def write_policy(path: Path, **overrides: Any) -> Path:
    policy = json.loads(json.dumps(PERMISSIVE_POLICY))
    policy.update(overrides)
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def write_request(tmp: Path, steps: list[dict[str, Any]], *, name: str = "req.yaml",
                  run_id: str = "r1", policy: str | None = "policy.yaml",
                  **top: Any) -> Path:
    request: dict[str, Any] = {"version": 1, "id": run_id, "repo": "./repo", "init_repo": True,
                               "branch": "main"}
    if policy:
        request["policy"] = policy
        if not (tmp / policy).exists():
            write_policy(tmp / policy)
    request.update(top)
    request["steps"] = steps
    path = tmp / name
    path.write_text(yaml.safe_dump(request, sort_keys=False))
    return path


def doit(tmp: Path, *args: str, env: dict[str, str] | None = None,
         check: int | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m doit -f dodo.py <args> outputs=out` in `tmp`; assert the exit code if given."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    if not any(a.startswith("outputs=") for a in args):
        args = (*args, "outputs=out")
    proc = subprocess.run([sys.executable, "-m", "doit", "-f", str(DODO), *args], cwd=tmp,
                          capture_output=True, text=True, env=full_env, timeout=600)
    if check is not None:
        assert proc.returncode == check, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def tape_events(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "audit" / "run_tape.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under `path` (including .git) with its bytes, for before/after equality."""
    return {p.relative_to(path).as_posix(): p.read_bytes()
            for p in sorted(path.rglob("*")) if p.is_file() and not p.is_symlink()}


@contextlib.contextmanager
def echo_listener() -> Iterator[int]:
    """A TCP server on the host's loopback: each connection gets back the first bytes it
    sends (up to 16), then is closed. Yields its port."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    conn.sendall(conn.recv(16))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=2)
        server.close()
