"""Smoke runs of the ONNX and Grad-CAM measurement scripts, so they cannot rot (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_data import fashion_mnist_idx_dir

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def run_script(name: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(REPO / "scripts" / name), *args],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_measure_onnx_smoke():
    pytest.importorskip("tf2onnx")
    rows = json.loads(run_script("measure_onnx.py", "--smoke"))
    assert [row["model"] for row in rows] == ["opset 13", "opset 13 int8"]
    assert rows[0]["agreement"] == 1.0 and rows[0]["max_dp"] < 1e-4


def test_gradcam_faithfulness_smoke(tmp_path):
    fashion_mnist_idx_dir()  # the script reads .cache/fashion-mnist
    document = json.loads(run_script("measure_gradcam_faithfulness.py", "--smoke",
                                     "--work", str(tmp_path)))
    assert document["N"] == 20
    assert 0 <= document["peak_in_square"] <= 1 and document["chance_square"] < 0.5
