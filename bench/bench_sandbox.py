"""Per-command overhead of run_confined (bwrap) against running `true` directly.

Usage: python bench/bench_sandbox.py [N]   (default N=50, both measured in the same run)
Target (DESIGN.md): <= 10 ms overhead per command step. Also prints where the time goes:
planning the mounts (pure Python), a bare bwrap start with the same argv, and the rest
(pipes, cgroup, rlimits, output pump).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentos_tasks.proc import run_confined
from agentos_tasks.sandbox.bwrap import build_bwrap_argv
from agentos_tasks.sandbox.hostfs import resolve_on_path
from agentos_tasks.sandbox.program import plan_program
from agentos_tasks.sandbox.spec import NO_NETWORK, ConfinedSpec


def timed_ms(action: object, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        action()  # type: ignore[operator]
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    true_path = resolve_on_path("true", env["PATH"])
    with tempfile.TemporaryDirectory() as tmp:
        worktree = Path(tmp) / "wt"
        worktree.mkdir()
        log = Path(tmp) / "true.out"
        spec = ConfinedSpec(worktree=worktree, readonly_paths=(), env=env, network=NO_NETWORK,
                            isolation="required", timeout_s=30, output_limit=1 << 20,
                            max_file_bytes=1 << 20)
        first = run_confined(["true"], spec, log)  # warm-up: probes bwrap and the cgroup once
        if first.backend != "bwrap" or first.exit_code != 0:
            print(f"bwrap not usable: {first}", file=sys.stderr)
            return 1

        def direct() -> None:
            subprocess.run([str(true_path)], env=env, cwd=worktree, check=True)

        def confined() -> None:
            run_confined(["true"], spec, log)

        def plan_only() -> None:
            build_bwrap_argv(["true"], spec, Path("/x/bwrap"),
                                     plan=plan_program("true", env, worktree))

        bare_argv = _drop_data_binds(list(first.wrapper_argv))

        def bare_bwrap() -> None:
            subprocess.run(bare_argv, env=env, cwd=worktree, check=True)

        # interleave so drift (cache, CPU frequency) hits both sides alike
        direct_ms: list[float] = []
        confined_ms: list[float] = []
        for _ in range(n):
            direct_ms += timed_ms(direct, 1)
            confined_ms += timed_ms(confined, 1)
        plan_ms = timed_ms(plan_only, n)
        bare_ms = timed_ms(bare_bwrap, n)

    d, c = statistics.median(direct_ms), statistics.median(confined_ms)
    print(f"N={n}  backend=bwrap  notes={first.notes}")
    print(f"direct `true`             median {d:7.2f} ms   mean {statistics.mean(direct_ms):7.2f}")
    confined_mean = statistics.mean(confined_ms)
    print(f"run_confined(['true'])    median {c:7.2f} ms   mean {confined_mean:7.2f}")
    print(f"  of which: mount plan    median {statistics.median(plan_ms):7.2f} ms")
    print(f"            bare bwrap    median {statistics.median(bare_ms):7.2f} ms")
    print(f"overhead per command      {c - d:7.2f} ms   ratio {c / d:5.1f}x   target <= 10 ms: "
          f"{'OK' if c - d <= 10 else 'ABOVE TARGET'}")
    return 0


def _drop_data_binds(argv: list[str]) -> list[str]:
    """The same sandbox without the fd-based parts (fds only exist inside run_confined)."""
    out, skip = [], 0
    for i, arg in enumerate(argv):
        if skip:
            skip -= 1
            continue
        if arg in ("--info-fd", "--seccomp"):
            skip = 1
            continue
        if arg == "--perms" and i + 2 < len(argv) and argv[i + 2] == "--ro-bind-data":
            skip = 4
            continue
        out.append(arg)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
