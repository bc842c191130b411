"""`agentos fleet`: many requests, landed one at a time per branch; local and on a real
local Ray cluster (a head node and a second worker node, both processes on this machine),
with a worker process killed mid-run."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.runutil import PERMISSIVE_POLICY, git

AGENTOS = [sys.executable, "-m", "agentos_tasks"]


def make_repo(path: Path, *, bare: bool = False) -> Path:
    work = path if not bare else path.with_suffix(".seed")
    git(work.parent, "init", "-q", "-b", "main", str(work))
    (work / "README.md").write_text("# target\n")
    git(work, "add", "README.md")
    git(work, "-c", "user.name=t", "-c", "user.email=t@x", "commit", "-q", "-m", "init")
    if bare:
        git(path.parent, "clone", "-q", "--bare", str(work), str(path))
        shutil.rmtree(work)
    return path


def write(tmp: Path, name: str, repo: str, steps: list[dict[str, Any]]) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "id": name, "repo": repo, "branch": "main",
                                    "policy": "policy.yaml", "steps": steps}))
    return path


def add(name: str) -> list[dict[str, Any]]:
    return [{"id": "w", "message": f"{name}: add", "write": {"path": f"docs/{name}.md",
                                                           "content": f"{name}\n"}}]


def setup_fleet(tmp: Path, per_repo: int) -> list[Path]:
    """Three targets (one checked out, one plain, one bare); `per_repo` requests on each
    one's main; on r1 also one that fails its check (lands nothing)."""
    policy = json.loads(json.dumps(PERMISSIVE_POLICY))
    policy["commands"] = [*policy.get("commands", []),
                          {"id": "py", "argv": [sys.executable, "-c"]}]
    (tmp / "policy.yaml").write_text(yaml.safe_dump(policy))
    make_repo(tmp / "r1")
    make_repo(tmp / "r2")
    make_repo(tmp / "r3.git", bare=True)
    requests = []
    for repo in ("r1", "r2", "r3.git"):
        for i in range(per_repo):
            requests.append(write(tmp, f"{repo.split('.')[0]}-{i}", f"./{repo}",
                                  add(f"{repo.split('.')[0]}-{i}")))
    failing = [*add("broken"), {"id": "check", "message": "check",
                                "run": [sys.executable, "-c", "raise SystemExit(3)"]}]
    requests.append(write(tmp, "broken", "./r1", failing))
    return requests


def fleet(tmp: Path, *args: str, env: dict[str, str] | None = None,
          wait: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AGENTOS, "fleet", *args, "--outputs", str(tmp / "out")], cwd=tmp,
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "NO_COLOR": "1", **(env or {})})


def summary(tmp: Path) -> dict[str, dict[str, Any]]:
    (path,) = (tmp / "out").glob("fleet-*.json")
    return {Path(r["request"]).stem: r for r in json.loads(path.read_text())["requests"]}


def check_landed(tmp: Path, per_repo: int, rows: dict[str, dict[str, Any]]) -> None:
    """Every good request landed exactly once, in one commit; the failing one nothing."""
    for repo in ("r1", "r2", "r3.git"):
        name = repo.split(".")[0]
        log = git(tmp / repo, "log", "--format=%s", "main").splitlines()
        assert log[-1] == "init" and len(log) == per_repo + 1, log
        assert sorted(log[:-1]) == sorted(f"{name}-{i}: add" for i in range(per_repo)), log
        files = git(tmp / repo, "ls-tree", "-r", "--name-only", "main").splitlines()
        assert sorted(f for f in files if f.startswith("docs/")) == \
            sorted(f"docs/{name}-{i}.md" for i in range(per_repo))
    for name, row in rows.items():
        if name == "broken":
            assert row["state"] == "failed" and row["commits"] == [], row
            assert "exited 4" in row["reason"], row
        else:
            assert row["state"] == "landed" and row["gates"] == "PASS", row
            assert len(row["commits"]) == 1, row
    assert "broken" not in git(tmp / "r1", "log", "--format=%s", "main")


def test_local_fleet_lands_each_request_once_and_each_verifies(tmp_path: Path) -> None:
    requests = setup_fleet(tmp_path, per_repo=2)
    assert subprocess.run([*AGENTOS, "keygen", "--out", str(tmp_path)],
                          capture_output=True).returncode == 0
    proc = fleet(tmp_path, *map(str, requests), "--jobs", "2", "--key",
                 str(tmp_path / "agentos.key"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4, out  # one request failed: not every request landed
    assert "Traceback" not in out
    assert re.search(r"fleet: broken(-\d+)? failed", out) and "6 of 7 landed" in out, out
    rows = summary(tmp_path)
    check_landed(tmp_path, 2, rows)
    # requests on one branch raced: the losers re-ran from the new head, none twice
    assert any(rows[f"r1-{i}"]["attempts"] > 1 for i in range(2)) or \
        any(rows[f"r2-{i}"]["attempts"] > 1 for i in range(2)), rows
    # each landed run verifies on its own, against its real target
    for name, row in rows.items():
        if row["state"] != "landed":
            continue
        verify = subprocess.run([*AGENTOS, "verify", row["run_dir"], "--key",
                                 str(tmp_path / "agentos.pub"), "--repo", row["repo"]],
                                capture_output=True, text=True)
        assert verify.returncode == 0, f"{name}\n{verify.stdout}{verify.stderr}"
    # the summary's timeline: each attempt's worker phases and the driver's, in order
    for row in rows.values():
        assert len(row["timing"]) == row["attempts"], row
        last = row["timing"][-1]
        assert last["run"] == Path(row["run_dir"]).name and {"clone", "run", "pack"} <= \
            set(last["worker"]) and "started" in last, row
        assert last["submitted"] <= last["returned"] <= last["unpacked"] <= last["settled"]
        if row["state"] == "landed":
            assert last["unpacked"] <= last["landed"] <= last["gated"] <= last["settled"]
    # r1's branch is checked out: its working tree followed the branch
    assert git(tmp_path / "r1", "status", "--porcelain") == ""
    assert (tmp_path / "r1" / "docs" / "r1-0.md").exists()
    # the same command again: landed (signed) run directories are never replaced
    before = {p: p.read_bytes() for row in rows.values() if row["state"] == "landed"
              for p in Path(row["run_dir"]).rglob("*") if p.is_file() and ".state" not in p.parts}
    again = fleet(tmp_path, *map(str, requests), "--jobs", "2")
    assert "Traceback" not in again.stdout + again.stderr
    after = {p: p.read_bytes() for p in before}
    assert after == before
    second = json.loads(sorted((tmp_path / "out").glob("fleet-*.json"))[-1].read_text())
    assert all(Path(r["run_dir"]).name != Path(rows[Path(r["request"]).stem]["run_dir"]).name
               for r in second["requests"] if r["run_dir"])


def test_a_workers_git_dir_is_never_trusted(tmp_path: Path) -> None:
    """The driver reads a worker's objects through a private git dir of its own: the
    worker's config is never used and an alternates file it sends is dropped (it could
    point the pack at other repositories on the driver host)."""
    from agentos_tasks.fleet.queue import worker_objects

    target = make_repo(tmp_path / "t")
    own = tmp_path / "worker.git"
    (own / "objects" / "info").mkdir(parents=True)
    (own / "objects" / "info" / "alternates").write_text("/etc/secret-repo/objects\n")
    (own / "config").write_text("[core]\n\tfsmonitor = touch /tmp/pwned-by-worker\n")
    head = git(target, "rev-parse", "HEAD")
    view = worker_objects(tmp_path / "view.git", own, target / ".git" / "objects", head)
    assert not (own / "objects" / "info" / "alternates").exists()
    assert "fsmonitor" not in (tmp_path / "view.git" / "config").read_text()
    assert view.rev_parse("HEAD") == head


def test_fleet_refuses_bad_input_before_anything_runs(tmp_path: Path) -> None:
    requests = setup_fleet(tmp_path, per_repo=1)
    twin = tmp_path / "twin.yaml"
    twin.write_text(requests[0].read_text())
    proc = fleet(tmp_path, str(requests[0]), str(twin))
    assert proc.returncode == 2 and "two requests of the fleet have the id" in proc.stderr
    proc = fleet(tmp_path, str(requests[0]), "--engine", "spark")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
    proc = fleet(tmp_path, str(requests[0]), "--engine", "ray", "--address", "127.0.0.1:9")
    if proc.returncode == 2 and "needs the ray package" in proc.stderr:
        assert os.environ.get("CI") != "true", proc.stderr
    else:
        assert proc.returncode == 2, proc.stderr
        assert "no Ray cluster answers at 127.0.0.1:9" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------ Ray


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A head node and a second worker node, both on this machine, loopback only."""
    if shutil.which("ray") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the Ray fleet test needs ray: pip install -e '.[ray]'")
        pytest.skip("ray is not installed (pip install -e '.[ray]')")
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # unix socket paths stay short
    port = "6391"
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats",
              f"--temp-dir={temp}"]
    ray = [shutil.which("ray") or "ray"]
    # a token file another Ray left in ~/.ray must not split head and node: no auth here
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    subprocess.run([*ray, "start", "--head", f"--port={port}", "--include-dashboard=false",
                    *common], check=True, capture_output=True, timeout=120, env=env)
    address = f"127.0.0.1:{port}"
    try:
        for _ in range(5):  # the head's GCS may not take a node yet
            joined = subprocess.run([*ray, "start", f"--address={address}", *common[:-1]],
                                    capture_output=True, text=True, timeout=120, env=env)
            if joined.returncode == 0:
                break
            time.sleep(3)
        else:
            pytest.fail(f"the second Ray node did not start:\n{joined.stdout[-2000:]}"
                        f"{joined.stderr[-2000:]}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = subprocess.run([*ray, "status", f"--address={address}"],
                                    capture_output=True, text=True).stdout
            if status.count("node_") >= 2:
                break
            time.sleep(1)
        else:
            pytest.fail(f"the second Ray node never joined:\n{status}")
        yield address
    finally:
        subprocess.run([*ray, "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_fleet_survives_a_killed_worker_and_lands_nothing_twice(
        tmp_path: Path, ray_cluster: str) -> None:
    """12 requests on 3 repositories (4 per branch) and one failing; the worker process
    running `r2-0` is SIGKILLed while its step runs: Ray runs the task again, on either
    node; every request lands once."""
    requests = setup_fleet(tmp_path, per_repo=4)
    slow = next(r for r in requests if r.stem == "r2-0")
    spec = yaml.safe_load(slow.read_text())
    spec["steps"].append({"id": "slow", "message": "slow",
                          "run": [sys.executable, "-c", "import time; time.sleep(6)"]})
    slow.write_text(yaml.safe_dump(spec))
    pids = tmp_path / "pids"
    pids.mkdir()
    env = {"AGENTOS_FLEET_PIDDIR": str(pids)}
    proc = subprocess.Popen([*AGENTOS, "fleet", *map(str, requests), "--engine", "ray",
                             "--address", ray_cluster, "--outputs", str(tmp_path / "out")],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "NO_COLOR": "1",
                                            "RAY_AUTH_MODE": "disabled", **env})
    try:
        pid_file = pids / "r2-0.pid"
        deadline = time.monotonic() + 120
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pid_file.exists(), "the slow request never started"
        time.sleep(2)  # inside its slow step
        first = int(pid_file.read_text())
        os.kill(first, signal.SIGKILL)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 4, out
    assert "Traceback" not in out and "12 of 13 landed" in out, out
    retried = [int(p.read_text()) for p in pids.glob("r2-0*.pid")]
    assert any(pid != first for pid in retried), "the killed task was not run again"
    rows = summary(tmp_path)
    check_landed(tmp_path, 4, rows)
    assert len({row["node"] for row in rows.values()}) == 2, rows  # both nodes worked
