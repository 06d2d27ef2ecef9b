"""A cold run (a new --bottleneck_dir and new output folders) on a machine where the same flags
ran before imports no TensorFlow: the int8 extraction runs on LiteRT, the frozen graph and the
checkpoint are written from the user cache's templates, the heat maps come from the kept map
model; and it writes what a run with TensorFlow writes.

Real processes (`python -X importtime -m retrainer.cli.retrain`), the real default extractor and
real Fashion-MNIST images, as in tests/test_warm_rerun.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_warm_rerun import REPO_ROOT, classified, stable

# What a cold run must compute as the first did (its paths and timings differ).
SAME = ("labels", "counts", "test_accuracy", "test_per_class", "head", "tta", "novelty",
        "extractor_id", "extractor_precision")


def retrain(tmp_path: Path, run: str, image_dir: Path) -> tuple[dict, bool]:
    """(the --json document, whether TensorFlow was imported) of a run in tmp_path/run with
    its own cache and outputs; the user cache (XDG_CACHE_HOME) is shared by every run."""
    out = tmp_path / run / "out"
    args = ["--image_dir", str(image_dir), "--bottleneck_dir", str(tmp_path / run / "cache"),
            "--output_graph", str(out / "graph.pb"), "--output_labels", str(out / "labels.txt"),
            "--summaries_dir", str(out / "logs"), "--checkpoint_path", str(out / "ckpt" / "head"),
            "--report_html", str(out / "report.html"), "--metrics_file", str(out / "m.json"),
            "--audit_file", str(out / "audit.json"), "--testing_percentage", "20",
            "--validation_percentage", "20", "--json", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    process = subprocess.run([sys.executable, "-X", "importtime", "-m", "retrainer.cli.retrain",
                              *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0]
                for line in process.stderr.splitlines() if line.startswith("import time:")}
    return json.loads(process.stdout), "tensorflow" in imported


def written(folder: Path) -> dict[str, bytes]:
    return {name: (folder / "out" / name).read_bytes() for name in (
        "graph.pb", "graph.pb.meta.json", "labels.txt", "ckpt/head.index",
        "ckpt/head.data-00000-of-00001")}


def heat_map_figures(folder: Path) -> int:
    return (folder / "out" / "report.html").read_text().count('alt="heat map of ')


@pytest.mark.slow
def test_a_cold_run_imports_no_tensorflow_and_writes_what_tensorflow_writes(
        tmp_path, fashion_subset_dir, fashion_mnist_holdout_dir):
    first, first_imported = retrain(tmp_path, "first", fashion_subset_dir)
    assert first_imported  # nothing kept on this machine yet: TensorFlow traces and converts
    cold, cold_imported = retrain(tmp_path, "cold", fashion_subset_dir)
    assert not cold_imported
    assert cold["bottlenecks_computed"] == first["bottlenecks_computed"] > 0
    assert written(tmp_path / "cold") == written(tmp_path / "first")
    results = [stable({key: document[key] for key in SAME}) for document in (first, cold)]
    assert results[0] == results[1]
    assert heat_map_figures(tmp_path / "cold") == heat_map_figures(tmp_path / "first") > 0
    assert classified(tmp_path / "cold", fashion_mnist_holdout_dir) >= 0.8
