"""200 write steps through `doit run` vs the raw git floor, measured in the same run.

Floor: git worktree add; per step write + git add + git commit; git format-patch of the
range; git am onto the target branch. Prints seconds and ratios against the issue-15
targets: full run <= 1.3x floor (200 and 1,000 steps), `doit gates` over the run <= 0.5 s
(200 steps) / <= 2 s (1,000 steps); also the DESIGN.md ones: no-op re-run <= 0.2x floor,
resume cost proportional to the remaining steps; and the executor's peak RSS.

    python bench/bench_run.py [--steps 200]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
       "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x", "GIT_COMMITTER_NAME": "b",
       "GIT_COMMITTER_EMAIL": "b@x"}


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, env=ENV, check=True, capture_output=True)


def make_repo(path: Path) -> None:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text("bench\n")
    git(path, "add", "README.md")
    git(path, "commit", "-q", "-m", "init")


def floor(root: Path, steps: int) -> float:
    repo = root / "floor-repo"
    make_repo(repo)
    started = time.perf_counter()
    wt = root / "floor-wt"
    git(repo, "worktree", "add", "-q", "--detach", str(wt), "main")
    for i in range(steps):
        target = wt / "docs" / f"f{i:04d}.md"
        target.parent.mkdir(exist_ok=True)
        target.write_text(f"content {i}\n")
        git(wt, "add", "--", str(target.relative_to(wt)))
        git(wt, "commit", "-q", "-m", f"step {i}")
    git(wt, "format-patch", "-q", "--binary", "-o", str(root / "floor-patches"), "main..HEAD")
    patches = sorted(str(p) for p in (root / "floor-patches").iterdir())
    git(repo, "am", "-q", "--keep-cr", *patches)
    return time.perf_counter() - started


def write_request(root: Path, steps: int) -> Path:
    policy = {"version": 1, "id": "bench", "operations": ["write"],
              "paths": {"allow": ["docs/**"]}, "isolation": "best-effort",
              "limits": {"max_steps": 10000}}
    (root / "policy.yaml").write_text(yaml.safe_dump(policy))
    request = {"version": 1, "id": "bench", "repo": "./repo", "init_repo": True,
               "branch": "main", "policy": "policy.yaml",
               "steps": [{"id": f"s{i:04d}", "write": {"path": f"docs/f{i:04d}.md",
                                                       "content": f"content {i}\n"}}
                         for i in range(steps)]}
    path = root / "req.yaml"
    path.write_text(yaml.safe_dump(request))
    return path


def doit(root: Path, *args: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "doit", "-f", str(PROJECT / "dodo.py"), *args,
                    "outputs=out"], cwd=root, check=True, capture_output=True)
    return time.perf_counter() - started


def gates_time(root: Path) -> float:
    return doit(root, "gates", "request=req.yaml")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3,
                        help="interleaved floor/run pairs; the median ratio is reported")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="agentos-bench-"))
    try:
        pairs = []
        peak_kib = 0
        for index in range(args.repeat):
            trial = root / f"trial{index}"
            trial.mkdir()
            write_request(trial, args.steps)
            floor_s = floor(trial, args.steps)
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            full_s = doit(trial, "run", "request=req.yaml")
            peak_kib = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before)
            pairs.append((full_s / floor_s, floor_s, full_s))
        pairs.sort()
        ratio, floor_s, full_s = pairs[len(pairs) // 2]
        best = root / f"trial{args.repeat // 2}"
        noop_s = statistics.median(doit(best, "run", "request=req.yaml") for _ in range(3))
        gates_s = gates_time(best)
        # resume cost: a run executed up to the last step, then re-run after editing only
        # the last quarter of the steps
        half = root / "resume"
        half.mkdir()
        write_request(half, args.steps)
        doit(half, "run", "request=req.yaml", f"step:s{args.steps - 1:04d}")
        text = (half / "req.yaml").read_text()
        cut = args.steps * 3 // 4
        text = text.replace(f"content {cut}\n", f"edited {cut}\n")
        (half / "req.yaml").write_text(text)
        resume_s = doit(half, "run", "request=req.yaml", f"step:s{args.steps - 1:04d}")
        print(f"steps                       {args.steps}  (median of {args.repeat} interleaved "
              "floor/run pairs)")
        print("all ratios                  " + ", ".join(f"{r:.2f}x" for r, _, _ in pairs))
        print(f"raw git floor               {floor_s:7.2f} s")
        print(f"doit run (full)             {full_s:7.2f} s   ratio {ratio:5.2f}x "
              "(target <= 1.3x)")
        print(f"doit run (no-op re-run)     {noop_s:7.2f} s   ratio {noop_s / floor_s:5.2f}x "
              "(target <= 0.2x)")
        print(f"resume, last 25% of steps   {resume_s:7.2f} s   ratio {resume_s / full_s:5.2f}x "
              "of the full run (proportional: ~0.25)")
        gates_target = 0.5 if args.steps <= 200 else 2.0
        print(f"doit gates                  {gates_s:7.2f} s   (target <= {gates_target:g} s "
              f"for {'200' if args.steps <= 200 else '1,000'} steps)")
        print(f"peak RSS (largest child)    {peak_kib / 1024:7.1f} MiB")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
