"""The bench scripts run at a tiny size (no timing asserted)."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_bench_run_tiny() -> None:
    out = subprocess.run([sys.executable, str(BENCH / "bench_run.py"), "--steps", "2",
                          "--repeat", "1"], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert "raw git floor" in out and "doit gates" in out
    assert "(target <= 1.3x)" in out and "(target <= 0.5 s for 200 steps)" in out
    assert "peak RSS" in out
