"""The README's first set-up command, examples/fashion_mnist_demo.sh, runs end to end: set-up
(`scripts/setup.sh main`, idempotent), a folder of real images, `retrain` with default flags,
`label-image` on held-out images. Smaller than the README's run (PER_CLASS=20), into a temporary
folder (OUT)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.fixtures_data import REPO_ROOT


@pytest.mark.slow
def test_the_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PER_CLASS": "20", "OUT": str(out),
           "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    demo = subprocess.run(["bash", "examples/fashion_mnist_demo.sh"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert demo.returncode == 0, demo.stderr[-4000:]
    assert "pip install -e ." in demo.stderr  # it says what it installs
    assert "Final test accuracy = " in demo.stdout
    assert demo.stdout.count("==> ") == 20  # 2 held-out images per class, classified
    for name in ("output_graph.pb", "output_labels.txt", "metrics.json", "report.html"):
        assert (out / name).is_file(), name
