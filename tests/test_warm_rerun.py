"""A rerun of the same command, every result kept under --bottleneck_dir, imports no TensorFlow
and writes what the first run wrote; a damaged kept graph is made again from the machine's
template, and a changed head flag brings TensorFlow back and makes a correct new graph.

Real processes (`python -X importtime -m retrainer.cli.retrain`), the real default extractor and
real Fashion-MNIST images; whether TensorFlow was imported is read from the interpreter's own
import log on stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

from retrainer.formats.graph_contract import metadata_path

REPO_ROOT = Path(__file__).resolve().parents[1]
# What varies between two runs of the same command: timings, and how the vectors were obtained.
VARYING = {"seconds", "peak_memory_gib", "bottlenecks_computed", "bottlenecks_reused",
           "cached"}  # the audit's: whether its findings were read back


def retrain(tmp_path: Path, image_dir: Path, *extra: str, run: str = "",
            launch: Sequence[str] = ("-m", "retrainer.cli.retrain")) -> tuple[dict, bool]:
    """(the --json document, whether TensorFlow was imported) of one real `retrain` process
    with its cache and outputs in tmp_path/run; the user cache is tmp_path/xdg. `launch`: the
    interpreter's arguments that start the CLI."""
    out = tmp_path / run / "out"
    args = ["--image_dir", str(image_dir), "--bottleneck_dir", str(tmp_path / run / "cache"),
            "--output_graph", str(out / "graph.pb"), "--output_labels", str(out / "labels.txt"),
            "--summaries_dir", str(out / "logs"), "--checkpoint_path", str(out / "ckpt" / "head"),
            "--report_html", str(out / "report.html"), "--metrics_file", str(out / "m.json"),
            "--audit_file", str(out / "audit.json"), "--testing_percentage", "20",
            "--validation_percentage", "20", "--json", "--quiet", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    process = subprocess.run([sys.executable, "-X", "importtime", *launch, *args],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0]
                for line in process.stderr.splitlines() if line.startswith("import time:")}
    return json.loads(process.stdout), "tensorflow" in imported  # the package or any module


def stable(document: object) -> object:
    """The document without what varies between two runs of the same command, at any depth."""
    if isinstance(document, dict):
        return {key: stable(value) for key, value in document.items() if key not in VARYING}
    if isinstance(document, list):
        return [stable(value) for value in document]
    return document


def outputs(tmp_path: Path) -> dict[str, bytes]:
    out = tmp_path / "out"
    return {name: (out / name).read_bytes()
            for name in ("graph.pb", "graph.pb.meta.json", "labels.txt")}


def classified(tmp_path: Path, holdout: Path) -> float:
    """The share of held-out images the exported graph classifies right, run as TensorFlow's
    label_image.py runs it."""
    from tests.test_export import label_image_py

    labels = (tmp_path / "out" / "labels.txt").read_text().splitlines()
    names = {"Trouser": "trouser", "Bag": "bag", "Sneaker": "sneaker", "Dress": "dress"}
    results = [labels[int(np.argmax(label_image_py(tmp_path / "out" / "graph.pb", image, 224,
                                                   224)[1]))] == label
               for folder, label in names.items()
               for image in sorted((holdout / folder).iterdir())[:5]]
    return sum(results) / len(results)


@pytest.mark.slow
def test_a_warm_rerun_imports_no_tensorflow_and_writes_the_same(tmp_path, fashion_subset_dir,
                                                                 fashion_mnist_holdout_dir):
    first, first_imported = retrain(tmp_path, fashion_subset_dir)
    assert first_imported  # the first run extracts: TensorFlow, from the start
    made = outputs(tmp_path)

    again, imported = retrain(tmp_path, fashion_subset_dir)
    assert not imported
    assert stable(again) == stable(first)
    assert again["bottlenecks_reused"] == first["bottlenecks_computed"] + first[
        "bottlenecks_reused"]
    assert outputs(tmp_path) == made
    assert json.loads((tmp_path / "out" / "m.json").read_text())["test_accuracy"] == \
        first["test_accuracy"]
    assert classified(tmp_path, fashion_mnist_holdout_dir) >= 0.8

    # A damaged kept graph is made again, byte for byte the same (from this machine's template
    # of its structure: no TensorFlow either).
    graph = tmp_path / "out" / "graph.pb"
    graph.write_bytes(graph.read_bytes()[:-10])
    repaired, imported = retrain(tmp_path, fashion_subset_dir)
    assert not imported and outputs(tmp_path) == made and stable(repaired) == stable(first)

    # A changed head flag: another head, a new graph that matches its sidecar and still works.
    changed, imported = retrain(tmp_path, fashion_subset_dir, "--how_many_training_steps", "60",
                                "--learning_rate", "0.05")
    assert imported and changed["head"]["solver"] == "sgd"
    assert graph.read_bytes() != made["graph.pb"]
    sidecar = json.loads(metadata_path(graph).read_text())
    import hashlib

    assert sidecar["graph_sha256"] == hashlib.sha256(graph.read_bytes()).hexdigest()
    assert classified(tmp_path, fashion_mnist_holdout_dir) >= 0.6
