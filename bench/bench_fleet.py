"""A fleet of N demo-sized requests (six writes each, one target repository each) on W
workers vs the same requests one after another, in the same run.

Target (issue 15): fleet wall time <= 1.5x (total single-request time / workers).
Single-request time is `agentos exec run` of each request on its own target; the fleet
is `agentos fleet --engine local --jobs W` and, with --ray, `--engine ray` on a local Ray
instance with W CPUs: the whole command (Ray's import, start-up and shutdown included),
and its fleet loop alone (first submission to summary, Ray up), from the fleet summary's
timeline. Each fleet's timeline medians (worker clone/run/pack, driver unpack/land/gates)
are printed too.

    python bench/bench_fleet.py [--requests 12] [--workers 2] [--ray]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

AGENTOS = [sys.executable, "-m", "agentos_tasks"]
STEPS = [{"id": f"step_0{i}", "message": f"step_0{i}: add doc {i}",
          "write": {"path": f"docs/{i}.md", "content": f"# {i}\n"}} for i in range(1, 7)]


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def setup(root: Path, count: int) -> list[Path]:
    requests = []
    for n in range(count):
        repo = root / f"repo{n}"
        repo.mkdir(parents=True)
        git(repo, "init", "-q", "-b", "main")
        (repo / "README.md").write_text("# target\n")
        git(repo, "add", "README.md")
        git(repo, "-c", "user.name=b", "-c", "user.email=b@x", "commit", "-q", "-m", "init")
        request = root / f"r{n}.yaml"
        request.write_text(yaml.safe_dump({"version": 1, "id": f"r{n}", "repo": f"./repo{n}",
                                           "branch": "main", "steps": STEPS}))
        requests.append(request)
    return requests


def timed(argv: list[str], cwd: Path) -> float:
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False,
                          env={**os.environ, "NO_COLOR": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}\n{proc.stdout[-2000:]}"
                         f"{proc.stderr[-2000:]}")
    return time.monotonic() - started


def profile(out: Path) -> str:
    """Where a fleet's time went, from its summary's timeline (medians per attempt)."""
    (path,) = out.glob("fleet-*.json")
    data = json.loads(path.read_text())
    spans: dict[str, list[float]] = {}
    for row in data["requests"]:
        for t in row["timing"]:
            worker = t.get("worker", {})
            for name in ("clone", "run", "pack"):
                if name in worker:
                    spans.setdefault(f"worker {name}", []).append(worker[name])
            if "unpacked" in t:
                spans.setdefault("driver unpack", []).append(t["unpacked"] - t["returned"])
            if "landed" in t:
                spans.setdefault("driver land", []).append(t["landed"] - t["unpacked"])
            if "gated" in t:
                spans.setdefault("driver gates", []).append(t["gated"] - t["landed"])
            spans.setdefault("driver settle", []).append(t["settled"] - t["returned"])
    attempts = sum(len(r["timing"]) for r in data["requests"])
    first = min(t["started"] for r in data["requests"] for t in r["timing"] if "started" in t)
    parts = [f"{k} {statistics.median(v):.3f} s (sum {sum(v):.2f})" for k, v in spans.items()]
    return (f"  {attempts} attempts; engine start {data['timing']['engine_start']:.2f} s, "
            f"fleet loop {data['timing']['wall']:.2f} s (first task started at "
            f"{first:.2f} s); medians: " + ", ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ray", action="store_true", help="also the Ray engine")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="agentos-bench-fleet-"))
    try:
        singles_dir, fleet_dir, ray_dir = root / "singles", root / "fleet", root / "ray"
        singles = setup(singles_dir, args.requests)
        total = sum(timed([*AGENTOS, "exec", "run", "--request", str(r), "--outputs",
                           str(singles_dir / "out")], singles_dir) for r in singles)
        ideal = total / args.workers
        print(f"single requests one after another: {total:.2f} s ({args.requests} requests);"
              f" / {args.workers} workers = {ideal:.2f} s")
        fleet = setup(fleet_dir, args.requests)
        local = timed([*AGENTOS, "fleet", *map(str, fleet), "--jobs", str(args.workers),
                       "--outputs", str(fleet_dir / "out")], fleet_dir)
        print(f"fleet --engine local --jobs {args.workers}: {local:.2f} s = "
              f"{local / ideal:.2f}x of total/workers (target <= 1.5x)")
        print(profile(fleet_dir / "out"))
        if args.ray:
            ray_requests = setup(ray_dir, args.requests)
            ray = timed([*AGENTOS, "fleet", *map(str, ray_requests), "--engine", "ray",
                         "--jobs", str(args.workers), "--outputs", str(ray_dir / "out")],
                        ray_dir)
            print(f"fleet --engine ray ({args.workers} CPUs, start-up included): {ray:.2f} s "
                  f"= {ray / ideal:.2f}x of total/workers (target <= 1.5x)")
            print(profile(ray_dir / "out"))
            (path,) = (ray_dir / "out").glob("fleet-*.json")
            loop = json.loads(path.read_text())["timing"]["wall"]
            print(f"fleet --engine ray, counted from Ray up (first submission to summary): "
                  f"{loop:.2f} s = {loop / ideal:.2f}x of total/workers (target <= 1.5x)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
