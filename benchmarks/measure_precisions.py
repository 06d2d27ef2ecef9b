"""Measure each extractor precision end to end: training-time and exported-graph test accuracy, images/s.

    python -m benchmarks.measure_precisions [--fashion 1000] [--photos 500] [--steps 1000] [--smoke]

For each dataset and each of float32, bfloat16 and int8 this runs `retrain` (retrainer.pipeline.run,
empty bottleneck cache, fixed seed), then runs the exported frozen graph -- which always holds the
float32 extractor -- on the test split's files through retrainer.classify, as `label-image` would.
Prints one table row per (dataset, precision): training-time test accuracy, the export's test
accuracy, their difference in points, and the bottleneck stage's images/s in that run.

Datasets: Fashion-MNIST (--fashion images, 10 classes), and real photo crops (--photos N: N
160x160 crops of Debian's mate-backgrounds photographs from `benchmarks.photos`, the photograph a
crop came from being its class: 12 classes).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks import cli
from benchmarks.data import fashion_mnist_folder
from benchmarks.photos import photo_set
from benchmarks.timing import machine_line
from retrainer.classify.config import ClassifyConfig
from retrainer.classify.run import classify_images
from retrainer.config import RetrainConfig
from retrainer.data.discovery import discover_images
from retrainer.data.split import TESTING
from retrainer.engines.cpu import cpu_precisions
from retrainer.pipeline import run

PHOTO_SIZE = (160, 160)


def export_accuracy(config: RetrainConfig) -> tuple[float, int]:
    """The exported graph's accuracy on the run's test split (files decoded by label-image's code)."""
    collection = discover_images(config.image_dir, config.validation_percentage,
                                 config.testing_percentage)
    tests = [image for image in collection.images if image.split == TESTING]
    results = classify_images(ClassifyConfig(graph=config.output_graph, labels=config.output_labels,
                                             top_k=1), [image.path for image in tests])
    correct = sum(result.predictions[0].label == collection.labels[image.label_index]
                  for image, result in zip(tests, results) if result.predictions)
    return correct / len(tests), len(tests)


def measure(name: str, image_dir: Path, work: Path, steps: int) -> None:
    for precision in cpu_precisions():  # bfloat16 only where TensorFlow runs it
        out = work / f"{name}-{precision}"
        config = RetrainConfig(
            image_dir=image_dir, output_graph=out / "graph.pb", output_labels=out / "labels.txt",
            summaries_dir=out / "logs", bottleneck_dir=out / "cache",
            checkpoint_path=out / "checkpoint" / "ckpt", how_many_training_steps=steps,
            extractor_precision=precision, show_progress=False,
            metrics_file=out / "metrics.json", report_html=out / "report.html",
            audit_file=out / "audit.json",
        )
        result = run(config)
        exported, count = export_accuracy(config)
        images = result.bottlenecks_computed
        rate = images / result.seconds["bottlenecks"]
        print(f"| {name} | {precision} | {result.test_accuracy * 100:.1f} % "
              f"| {exported * 100:.1f} % | {(exported - result.test_accuracy) * 100:+.1f} "
              f"| {count} | {rate:.0f} |", flush=True)


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--fashion", type=int, default=1000, help="Fashion-MNIST images; 0 skips")
    parser.add_argument("--photos", type=int, default=500, help="photo crops; 0 skips")
    parser.add_argument("--steps", type=int, default=1000, help="training steps per run")
    args = cli.parse(parser, {"fashion": 30, "photos": 24, "steps": 10})
    print(machine_line())
    print("| dataset | precision | test accuracy (training-time) | exported graph | difference "
          "(points) | test images | bottleneck stage images/s |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        if args.fashion:
            measure("Fashion-MNIST", fashion_mnist_folder(work / "fashion", args.fashion // 10),
                    work, args.steps)
        if args.photos:
            photo_set(work / "photos", args.photos, PHOTO_SIZE)
            measure("photo crops", work / "photos", work, args.steps)


if __name__ == "__main__":
    main()
