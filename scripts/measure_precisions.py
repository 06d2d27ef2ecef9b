"""Measure each extractor precision end to end: training-time and exported-graph test accuracy, images/s.

    PYTHONPATH=. python scripts/measure_precisions.py [--fashion 1000] [--photos DIR] [--steps 1000]

For each dataset and each of float32, bfloat16 and int8 this runs `retrain` (retrainer.pipeline.run,
empty bottleneck cache, fixed seed), then runs the exported frozen graph -- which always holds the
float32 extractor -- on the test split's files through retrainer.classify, as `label-image` would.
Prints one table row per (dataset, precision): training-time test accuracy, the export's test
accuracy, their difference in points, and the bottleneck stage's images/s in that run.

Datasets: Fashion-MNIST (the idx files in .cache/fashion-mnist; --fashion images, 10 classes), and
real photo crops (--photos N: N random crops of 10 of scikit-image's photos, the photo a crop
came from being its class; note that these photos are also in the int8 calibration set).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import fashion_mnist_folder  # noqa: E402

from retrainer.classify.config import ClassifyConfig
from retrainer.classify.run import classify_images  # noqa: E402
from retrainer.config import RetrainConfig  # noqa: E402
from retrainer.data.discovery import discover_images  # noqa: E402
from retrainer.data.split import TESTING  # noqa: E402
from retrainer.engines.cpu import cpu_precisions  # noqa: E402
from retrainer.pipeline import run  # noqa: E402

PHOTO_CLASSES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry",
                 "hubble_deep_field", "retina", "camera", "brick", "gravel")


def photo_crops_folder(out: Path, count: int) -> Path:
    """`count` 160x160 JPEG crops (15-35 % of a side, random place, mirrored half the time)."""
    import numpy as np
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(0)
    for index in range(count):
        name = PHOTO_CLASSES[index % len(PHOTO_CLASSES)]
        photo = np.asarray(Image.fromarray(getattr(skimage.data, name)()).convert("RGB"))
        side = int(min(photo.shape[:2]) * rng.uniform(0.15, 0.35))
        top = rng.integers(0, photo.shape[0] - side)
        left = rng.integers(0, photo.shape[1] - side)
        crop = photo[top:top + side, left:left + side]
        crop = crop[:, ::-1] if rng.random() < 0.5 else crop
        (out / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(crop)).resize((160, 160)).save(
            out / name / f"crop_{index:04d}.jpg", quality=int(rng.integers(70, 95)))
    return out


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
        print(f"| {name} | {precision} | {result.test_accuracy * 100:.1f} % | {exported * 100:.1f} % "
              f"| {(exported - result.test_accuracy) * 100:+.1f} | {count} | {rate:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--fashion", type=int, default=1000, help="Fashion-MNIST images; 0 skips")
    parser.add_argument("--photos", type=int, default=500, help="scikit-image photo crops; 0 skips")
    parser.add_argument("--steps", type=int, default=1000, help="training steps per run")
    args = parser.parse_args()
    print("| dataset | precision | test accuracy (training-time) | exported graph | difference "
          "(points) | test images | bottleneck stage images/s |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        if args.fashion:
            measure("Fashion-MNIST", fashion_mnist_folder(work / "fashion", args.fashion // 10),
                    work, args.steps)
        if args.photos:
            measure("skimage photo crops", photo_crops_folder(work / "photos", args.photos), work,
                    args.steps)


if __name__ == "__main__":
    main()
