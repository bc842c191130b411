"""One fleet request on a worker: clone the target from its git URL at the given base,
run the request there (steps, and apply onto the throwaway clone), and return the run
directory as tar bytes. Its gates run in the driver only, against the real target (the
ones that decide landing); running them here too cost a whole `agentos gates` per
request. The real target is never written here: landing is the driver's (queue.py).

A Job and its result are plain dicts of str/int/bytes so they cross a Ray task boundary
(pickled) and a process boundary unchanged.
"""

from __future__ import annotations

import io
import os
import socket
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from agentos_tasks import proc
from agentos_tasks.git import Git, git_binary, git_env
from agentos_tasks.model import Author

# Test hook (like faults.py): when set, a worker writes its pid to <dir>/<run>.pid as it
# starts, so a test can kill that very worker process mid-run.
PID_DIR_ENV_VAR = "AGENTOS_FLEET_PIDDIR"
RUN_TIMEOUT_S = 3600.0


def job_inputs(request_path: Path) -> dict[str, Any]:
    """What a worker needs besides the repository: the request's YAML, its policy's
    bytes and the bytes of every content_file / patch it names (by the relative path the
    request uses)."""
    raw = yaml.safe_load(request_path.read_bytes())
    base = request_path.parent
    files: dict[str, bytes] = {}
    for step in raw.get("steps") or []:
        if not isinstance(step, dict):
            continue
        write = step.get("write")
        if isinstance(write, dict) and isinstance(write.get("content_file"), str):
            name = _safe_rel(write["content_file"])
            files[name] = (base / name).read_bytes()
        if isinstance(step.get("patch"), str):
            name = _safe_rel(step["patch"])
            files[name] = (base / name).read_bytes()
    policy = raw.get("policy")
    return {"request": raw,
            "policy_bytes": (base / policy).read_bytes() if isinstance(policy, str) else None,
            "files": files}


def _agentos(args: list[str], cwd: Path) -> proc.ProcResult:
    return proc.run([sys.executable, "-m", "agentos_tasks", *args], cwd=cwd,
                    env=dict(os.environ), timeout=RUN_TIMEOUT_S, check=False)


def _clone(url: str, branch: str, base: str, dest: Path) -> None:
    """A fresh clone of `url` with `branch` at `base` checked out; host git hardened as
    everywhere (no hooks, no user config)."""
    env = git_env(Author())
    proc.run([git_binary(), "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false",
              "clone", "-q", "--no-hardlinks", "-b", branch, "--", url, str(dest)], env=env)
    git = Git(dest, Author())
    git.run("reset", "--hard", "-q", base)


def node_name() -> str:
    """This worker's node: its Ray node id (short) under Ray, else the host name. Ray is
    not imported here: a Ray worker has it already, a local one does not need it (its
    import is ~0.3 s, paid by the first local request)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"
    return socket.gethostname()


def _safe_rel(name: str) -> str:
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"input path {name!r} leaves the request's directory")
    return name


def execute(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job; return {run, node, pid, exit, stderr, tar, timing} (timing: seconds
    spent cloning, running and packing, on this worker)."""
    pid_dir = os.environ.get(PID_DIR_ENV_VAR)
    if pid_dir:
        Path(pid_dir, f"{job['run']}.pid").write_text(str(os.getpid()))
    result: dict[str, Any] = {"run": job["run"], "node": node_name(),
                              "pid": os.getpid(), "exit": None, "stderr": "",
                              "tar": b"", "timing": {}}
    timing: dict[str, float] = result["timing"]
    timing["started_at"] = time.time()  # wall clock: the driver places it on its timeline
    mark = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="agentos-fleet-") as scratch:
        root = Path(scratch)
        repo = root / "repo"
        try:
            _clone(job["url"], job["branch"], job["base"], repo)
        except proc.ProcError as err:
            result["exit"], result["stderr"] = 2, f"clone failed: {err.message}"[:2000]
            return result
        timing["clone"] = round(time.monotonic() - mark, 3)
        mark = time.monotonic()
        req_dir = root / "request"
        req_dir.mkdir()
        raw = dict(job["request"])
        raw.update(repo=str(repo), branch=job["branch"], id=job["run"])
        raw.pop("init_repo", None)
        raw.pop("base", None)
        if job.get("policy_bytes") is not None:
            (req_dir / "policy.yaml").write_bytes(job["policy_bytes"])
            raw["policy"] = "policy.yaml"
        for name, data in job["files"].items():
            path = req_dir / _safe_rel(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        request_file = req_dir / "request.yaml"
        request_file.write_text(yaml.safe_dump(raw, sort_keys=False))
        outputs = root / "outputs"
        ran = _agentos(["exec", "run", "--request", str(request_file),
                        "--outputs", str(outputs)], root)
        result["exit"] = ran.returncode
        result["stderr"] = ran.stderr.decode("utf-8", "replace")[-2000:]
        timing["run"] = round(time.monotonic() - mark, 3)
        mark = time.monotonic()
        run_dir = outputs / job["run"]
        if run_dir.is_dir():
            result["tar"] = pack_run(run_dir)
        timing["pack"] = round(time.monotonic() - mark, 3)
    return result


def pack_run(run_dir: Path) -> bytes:
    """The run directory as tar bytes: evidence, patches and the run's private git dir
    (its step commits), never the worktree."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(run_dir, arcname=run_dir.name,
                filter=lambda info: None if info.name.split("/")[1:2] == ["worktree"]
                or not (info.isfile() or info.isdir()) else info)
    return buf.getvalue()


def unpack_run(data: bytes, dest: Path) -> Path:
    """Extract a packed run under `dest` (regular files and dirs only, no escapes)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
        names = {m.name.split("/")[0] for m in tar.getmembers()}
    if len(names) != 1:
        raise ValueError("a packed run holds exactly one run directory")
    return dest / names.pop()
