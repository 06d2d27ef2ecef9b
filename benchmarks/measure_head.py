"""Measure head solvers end to end: test accuracy of the exported graph, and what training costs.

For each configuration, one `retrain` process on the image folder (all sharing one bottleneck
cache, so only the first extracts); then its exported frozen graph is run, the way label_image.py
runs it, on that run's test split. Prints one row per configuration: test accuracy of the
exported graph with its N, the run's own test figure (on the cached vectors, at the extraction
precision shown), the validation figure, the training stage's seconds and the whole run's; with
--search, the search table too. Without an image folder: 100 Fashion-MNIST images per class.

    python -m benchmarks.measure_head [IMAGE_DIR] [--bottleneck_dir DIR] \
        [--config "lbfgs=" --config "sgd=--head_solver sgd" ...] [--smoke]
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from benchmarks import cli
from benchmarks.data import fashion_mnist_folder
from benchmarks.timing import machine_line

DEFAULT_CONFIGS = ("lbfgs=", "sgd=--head_solver sgd")


def retrain(image_dir: Path, cache: Path, out: Path, flags: list[str]) -> dict[str, Any]:
    """One `retrain --json` process; its result document, with the process's wall seconds."""
    command = [sys.executable, "-m", "retrainer.cli.retrain", "--image_dir", str(image_dir),
               "--bottleneck_dir", str(cache), "--output_graph", str(out / "graph.pb"),
               "--output_labels", str(out / "labels.txt"), "--summaries_dir", str(out / "logs"),
               "--checkpoint_path", str(out / "checkpoint" / "head"),
               "--metrics_file", str(out / "metrics.json"), "--report_html", "",
               "--audit_file", str(out / "audit.json"), "--skip_audit", "--json",
               "--logging_verbosity", "ERROR", *flags]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if done.returncode != 0:
        sys.exit(f"retrain {flags} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    document: dict[str, Any] = json.loads(done.stdout)
    document["wall"] = time.perf_counter() - started
    return document


def exported_test_accuracy(image_dir: Path, graph: Path, input_size: tuple[int, int],
                           percentages: tuple[float, float]) -> tuple[float, int]:
    """The frozen graph's accuracy on the run's test split (decoded as training decodes)."""
    from retrainer.data.batches import decode_files
    from retrainer.data.discovery import discover_images
    from retrainer.data.split import TESTING
    from retrainer.exports.verify import FROZEN_GRAPH, export_report

    collection = discover_images(image_dir, *percentages)
    test = [image for image in collection.images if image.split == TESTING]
    pixels, ok = decode_files([image.path for image in test], input_size)
    labels = np.array([image.label_index for image in test], np.int64)[ok]
    (report,) = export_report([(FROZEN_GRAPH, graph)], pixels[ok], labels)
    return report.accuracy, int(ok.sum())


def percentages_of(flags: list[str]) -> tuple[float, float]:
    """(--validation_percentage, --testing_percentage) among `flags` (retrain's default 10, 10)."""
    values = {"--validation_percentage": 10.0, "--testing_percentage": 10.0}
    for index, flag in enumerate(flags[:-1]):
        if flag in values:
            values[flag] = float(flags[index + 1])
    return values["--validation_percentage"], values["--testing_percentage"]


def measure(image_dir: Path, cache: Path, configs: list[list[str]], extra: list[str]) -> None:
    print(f"{'config':<14} {'exported test':>14} {'N':>6} {'run test':>9} {'precision':>9} "
          f"{'validation':>11} {'train s':>8} {'run s':>7}  head")
    with tempfile.TemporaryDirectory() as work:
        for name, flags in configs:
            out = Path(work) / name
            arguments = shlex.split(flags) + extra
            document = retrain(image_dir, cache, out, arguments)
            meta = json.loads((out / "graph.pb.meta.json").read_text())
            accuracy, count = exported_test_accuracy(
                image_dir, out / "graph.pb", (meta["input_height"], meta["input_width"]),
                percentages_of(arguments))
            head = document.get("head") or {}
            validation = document["metrics"]["validation"]["accuracy"] or 0.0
            search = document.get("search") or {}
            print(f"{name:<14} {accuracy * 100:13.2f}% {count:>6} "
                  f"{(document['test_accuracy'] or 0) * 100:8.2f}% "
                  f"{document['extractor_precision']:>9} {validation * 100:10.2f}% "
                  f"{document['seconds']['train']:8.2f} {document['wall']:7.1f}  "
                  f"{head.get('solver')} l2={head.get('l2')} {search.get('chosen', '')}",
                  flush=True)
            for row in search.get("candidates", []):
                print(f"    search: {row['name']:<34} validation "
                      f"{(row['validation_accuracy'] or 0) * 100:5.1f}%  {row['seconds']:6.1f} s  "
                      f"{row['status']}", flush=True)


def main(argv: Optional[list[str]] = None) -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("image_dir", type=Path, nargs="?",
                        help="class folders (default: Fashion-MNIST, --per_class per class)")
    parser.add_argument("--per_class", type=int, default=100)
    parser.add_argument("--bottleneck_dir", type=Path,
                        help="shared vector cache (default: a temporary one)")
    parser.add_argument("--config", action="append", help="NAME=FLAGS (repeatable)")
    parser.add_argument("--extractor", help="--tfhub_module for every configuration")
    args = cli.parse(parser, {"per_class": 4,
                              "config": ["lbfgs=", "sgd=--how_many_training_steps 20"]}, argv)
    configs = [entry.split("=", 1) for entry in (args.config or DEFAULT_CONFIGS)]
    logging.getLogger("retrainer").setLevel(logging.ERROR)  # discovery's notes, for the test split
    extra = [] if args.extractor is None else ["--tfhub_module", args.extractor]
    print(machine_line())
    with tempfile.TemporaryDirectory() as scratch:
        image_dir = args.image_dir
        if image_dir is None:
            image_dir = fashion_mnist_folder(Path(scratch) / "images", args.per_class)
        print(f"{image_dir}")
        measure(image_dir, args.bottleneck_dir or Path(scratch) / "cache", configs, extra)


if __name__ == "__main__":
    main()
