"""Measure head solvers end to end: test accuracy of the exported graph, and what training costs.

For each configuration, one `retrain` process on IMAGE_DIR (all sharing one bottleneck cache, so
only the first extracts); then its exported frozen graph is run, the way label_image.py runs it,
on that run's test split. Prints one row per configuration: test accuracy of the exported graph
with its N, the run's own (cached-vector) test figure, the validation figure, the training
stage's seconds and the whole run's.

    python benchmarks/measure_head.py IMAGE_DIR --bottleneck_dir DIR \
        [--config "lbfgs=" --config "sgd=--head_solver sgd" ...] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = ("lbfgs=", "sgd=--head_solver sgd")


def retrain(image_dir: Path, cache: Path, out: Path, flags: list[str]) -> dict:
    command = [sys.executable, "-m", "retrainer.cli.retrain", "--image_dir", str(image_dir),
               "--bottleneck_dir", str(cache), "--output_graph", str(out / "graph.pb"),
               "--output_labels", str(out / "labels.txt"), "--summaries_dir", str(out / "logs"),
               "--checkpoint_path", str(out / "checkpoint" / "head"),
               "--metrics_file", str(out / "metrics.json"), "--report_html", "",
               "--audit_file", str(out / "audit.json"), "--skip_audit", "--json",
               "--logging_verbosity", "ERROR", *flags]
    environment = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    started = time.perf_counter()
    done = subprocess.run(command, env=environment, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"retrain {flags} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    document = json.loads(done.stdout)
    document["wall"] = time.perf_counter() - started
    return document


def exported_test_accuracy(image_dir: Path, graph: Path, input_size: tuple[int, int]
                           ) -> tuple[float, int]:
    """The frozen graph's accuracy on the run's test split (decoded as training decodes)."""
    from retrainer.data.discovery import discover_images
    from retrainer.data.batches import decode_files
    from retrainer.exports.verify import FROZEN_GRAPH, export_report
    from retrainer.data.split import TESTING

    collection = discover_images(image_dir, 10, 10)
    test = [image for image in collection.images if image.split == TESTING]
    pixels, ok = decode_files([image.path for image in test], input_size)
    labels = np.array([image.label_index for image in test], np.int64)[ok]
    (report,) = export_report([(FROZEN_GRAPH, graph)], pixels[ok], labels)
    return report.accuracy, int(ok.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image_dir", type=Path)
    parser.add_argument("--bottleneck_dir", type=Path, required=True)
    parser.add_argument("--config", action="append", help="NAME=FLAGS (repeatable)")
    parser.add_argument("--smoke", action="store_true", help="--tfhub_module tiny_test")
    args = parser.parse_args()
    configs = [entry.split("=", 1) for entry in (args.config or DEFAULT_CONFIGS)]
    print(f"{args.image_dir}; load {os.getloadavg()[0]:.2f}")
    print(f"{'config':<12} {'exported test':>14} {'N':>6} {'run test':>9} {'validation':>11} "
          f"{'train s':>8} {'run s':>7}  head")
    with tempfile.TemporaryDirectory() as work:
        for name, flags in configs:
            out = Path(work) / name
            extra = shlex.split(flags) + (["--tfhub_module", "tiny_test"] if args.smoke else [])
            document = retrain(args.image_dir, args.bottleneck_dir, out, extra)
            meta = json.loads((out / "graph.pb.meta.json").read_text())
            accuracy, count = exported_test_accuracy(
                args.image_dir, out / "graph.pb", (meta["input_height"], meta["input_width"]))
            head = document.get("head") or {}
            validation = document["metrics"]["validation"]["accuracy"] or 0.0
            chosen = (document.get("search") or {}).get("chosen", "")
            print(f"{name:<12} {accuracy * 100:13.2f}% {count:>6} "
                  f"{(document['test_accuracy'] or 0) * 100:8.2f}% {validation * 100:10.2f}% "
                  f"{document['seconds']['train']:8.2f} {document['wall']:7.1f}  "
                  f"{head.get('solver')} l2={head.get('l2')} {chosen}", flush=True)
            for row in (document.get("search") or {}).get("candidates", []):
                print(f"    search: {row['name']:<34} validation "
                      f"{(row['validation_accuracy'] or 0) * 100:5.1f}%  {row['seconds']:6.1f} s  "
                      f"{row['status']}", flush=True)


if __name__ == "__main__":
    main()
