"""benchmarks/bench_vector_formats.py keeps running: its smoke mode, in the slow suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_vector_formats_smoke():
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_vector_formats", "--smoke"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    for row in ("npy per entry", "packs of 32", "shard run", "ram://: shard run"):
        assert f"\n{row} " in done.stdout
