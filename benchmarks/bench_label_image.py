"""Benchmark: classifying N images in one `label-image` call vs one call per image.

One call loads TensorFlow and the graph once and decodes images on a thread pool while the model
runs; separate calls (what a shell loop over label_image.py does) pay the start-up per image.
Separate calls are measured on --separate images and scaled to N (said in the output).

    python -m benchmarks.bench_label_image [--images 200] [--separate 20]
        [--extractor efficientnet_lite0|tiny_test] [--smoke]

Photos: 480x360 JPEGs from `benchmarks.photos` (crops of Debian's mate-backgrounds photographs).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import cli
from benchmarks.photos import SMALL, photo_set
from benchmarks.timing import ENV, machine_line

TARGET_RATIO = 10.0


def export_graph(folder: Path, extractor_name: str) -> Path:
    """The real exporter's graph, sidecar and labels: the named extractor + an untrained 5-class head."""
    from retrainer.exports.classifier import Classifier
    from retrainer.exports.graph import GraphExporter
    from retrainer.extractors import create_extractor
    from retrainer.formats.graph_contract import write_labels
    from retrainer.training.head_layer import initial_head

    if extractor_name == "tiny_test":
        import tests.fixtures_extractors  # noqa: F401  (registers tiny_test)
    extractor = create_extractor(extractor_name)
    labels = ("a", "b", "c", "d", "e")
    head = initial_head(extractor.spec.vector_size, len(labels), seed=0)
    graph = folder / "output_graph.pb"
    GraphExporter(Classifier(extractor, head, labels, "final_result")).write_graph(graph)
    write_labels(folder / "output_labels.txt", labels)
    return graph


def label_image(graph: Path, images: list[Path]) -> float:
    """Seconds for one `label-image --quiet` process over `images`."""
    command = [sys.executable, "-m", "retrainer.cli.label_image", "--graph", str(graph), "--quiet",
               *map(str, images)]
    start = time.perf_counter()
    process = subprocess.run(command, capture_output=True, text=True, env=ENV)
    seconds = time.perf_counter() - start
    if process.returncode != 0 or len(process.stdout.splitlines()) != len(images):
        sys.exit(f"label-image failed ({process.returncode}): {process.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--separate", type=int, default=20, help="separate calls actually timed")
    parser.add_argument("--extractor", default="efficientnet_lite0")
    args = cli.parse(parser, {"images": 4, "separate": 1})

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        photos = photo_set(folder / "photos", args.images, SMALL)
        graph = export_graph(folder, args.extractor)
        print(f"graph: {args.extractor} ({graph.stat().st_size / 1e6:.1f} MB), "
              f"{args.images} JPEGs 480x360, {machine_line()}")
        label_image(graph, photos[:1])  # warm the file cache and Python's bytecode cache
        one_call = label_image(graph, photos)
        separate = [label_image(graph, [photo]) for photo in photos[: args.separate]]
    per_call = float(np.median(separate))
    scaled = per_call * args.images
    ratio = scaled / one_call
    print(f"one call, {args.images} images: {one_call:.1f} s ({args.images / one_call:.1f} images/s)")
    print(f"separate calls: median {per_call:.2f} s each over {args.separate} calls -> "
          f"x{args.images} = {scaled:.0f} s (scaled, not all run)")
    print(f"ratio: {ratio:.1f}x faster in one call (target >= {TARGET_RATIO:g}x: "
          f"{'met' if ratio >= TARGET_RATIO else 'NOT met'})")


if __name__ == "__main__":
    main()
