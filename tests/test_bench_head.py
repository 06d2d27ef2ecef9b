"""benchmarks/bench_head.py keeps running: its smoke mode, in the slow suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_head_smoke():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_head.py"), "--smoke"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    for variant in ("keras_fit", "loop", "convex"):
        assert f"  {variant} " in done.stdout
