"""A 1-step run on a big repository (default 20,000 files) vs the raw git floor, same run.

Floor: git worktree add + write + add + commit + format-patch + am. Also: worktree set-up
(`worktree_created` minus `policy_loaded` on the run's tape) vs a plain `git worktree add`,
and the executor's peak RSS (largest waited-for child of this process: doit or a git).
The repository is generated once and cached in /tmp/agentos-bench-cache/.

    python bench/bench_scale.py [--files 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_run import ENV, doit, git

CACHE = Path("/tmp/agentos-bench-cache")


def cached_repo(files: int) -> Path:
    repo = CACHE / f"repo-{files}"
    if (repo / ".git" / "bench-ready").exists():
        return repo
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    for i in range(files):
        path = repo / "src" / f"d{i // 100:04d}" / f"f{i:06d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"file {i}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "big")
    (repo / ".git" / "bench-ready").touch()
    return repo


def clone(src: Path, dst: Path) -> None:
    subprocess.run(["git", "clone", "-q", str(src), str(dst)], env=ENV, check=True,
                   capture_output=True)


def floor(root: Path) -> tuple[float, float]:
    repo = root / "floor-repo"
    started = time.perf_counter()
    wt = root / "floor-wt"
    git(repo, "worktree", "add", "-q", "--detach", str(wt), "main")
    setup = time.perf_counter() - started
    (wt / "docs").mkdir()
    (wt / "docs" / "new.md").write_text("new\n")
    git(wt, "add", "--", "docs/new.md")
    git(wt, "commit", "-q", "-m", "step")
    git(wt, "format-patch", "-q", "--binary", "-o", str(root / "floor-patches"), "main..HEAD")
    git(repo, "am", "-q", "--keep-cr", *sorted(str(p) for p in (root / "floor-patches").iterdir()))
    return time.perf_counter() - started, setup


def write_request(root: Path) -> None:
    policy = {"version": 1, "id": "bench", "operations": ["write"],
              "paths": {"allow": ["docs/**"]}, "isolation": "best-effort"}
    (root / "policy.yaml").write_text(yaml.safe_dump(policy))
    request = {"version": 1, "id": "bench", "repo": "./repo", "branch": "main",
               "policy": "policy.yaml",
               "steps": [{"id": "s0", "write": {"path": "docs/new.md", "content": "new\n"}}]}
    (root / "req.yaml").write_text(yaml.safe_dump(request))


def tape_setup_seconds(root: Path) -> float:
    stamps = {}
    for line in (root / "out" / "bench" / "audit" / "run_tape.jsonl").read_text().splitlines():
        event = json.loads(line)
        stamps.setdefault(event["event"], datetime.fromisoformat(event["ts"]))
    return (stamps["worktree_created"] - stamps["policy_loaded"]).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    source = cached_repo(args.files)
    root = Path(tempfile.mkdtemp(prefix="agentos-bench-scale-"))
    try:
        pairs, setups = [], []
        peak_kib = 0
        for index in range(args.repeat):
            trial = root / f"trial{index}"
            trial.mkdir()
            clone(source, trial / "floor-repo")
            clone(source, trial / "repo")
            write_request(trial)
            floor_s, floor_setup = floor(trial)
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            ours_s = doit(trial, "run", "request=req.yaml")
            peak_kib = max(peak_kib, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                           before)
            pairs.append((ours_s / floor_s, floor_s, ours_s))
            setups.append((tape_setup_seconds(trial) / floor_setup, floor_setup))
            shutil.rmtree(trial, ignore_errors=True)
        pairs.sort()
        setups.sort()
        ratio, floor_s, ours_s = pairs[len(pairs) // 2]
        setup_ratio, setup_floor = setups[len(setups) // 2]
        print(f"files                       {args.files}  (median of {args.repeat} pairs)")
        print("all ratios                  " + ", ".join(f"{r:.2f}x" for r, _, _ in pairs))
        print(f"raw git floor               {floor_s:7.2f} s")
        print(f"doit run (1 step)           {ours_s:7.2f} s   ratio {ratio:5.2f}x "
              "(target <= 1.3x)")
        print(f"worktree set-up             {setup_floor * setup_ratio:7.2f} s   ratio "
              f"{setup_ratio:5.2f}x of plain git worktree add {setup_floor:.2f} s "
              "(target <= 1.2x)")
        print(f"peak RSS (largest child)    {peak_kib / 1024:7.1f} MiB")
        print(f"median floor                {statistics.median(p[1] for p in pairs):7.2f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
