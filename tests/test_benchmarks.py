"""Every benchmark's `--smoke` mode runs to the end, so none can rot (slow suite).

Parametrized over the modules in benchmarks/: a new benchmark is tested without editing this file.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted(path.stem for pattern in ("bench_*.py", "measure_*.py")
                    for path in (REPO / "benchmarks").glob(pattern))
NEEDS = {"bench_beam": "distributed"}  # optional extras (.[beam,dask]): without them it skips
SMOKE_TIMEOUT_S = 600


def test_every_benchmark_is_found():
    assert {"bench_audit", "bench_camera", "bench_pipeline", "measure_exports"} <= set(BENCHMARKS)


@pytest.mark.slow
@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_smoke_mode_runs(name: str, tmp_path: Path):
    needed = NEEDS.get(name)
    if needed and importlib.util.find_spec(needed) is None:
        pytest.skip(f"{name} needs {needed} (pip install '.[beam,dask]')")
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--smoke"], cwd=REPO, capture_output=True,
        text=True, timeout=SMOKE_TIMEOUT_S,
        env={**os.environ, "TMPDIR": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, (
        f"{name} --smoke failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    assert done.stdout.strip(), f"{name} --smoke printed no figures"
    assert "Traceback" not in done.stderr
