"""Measure the deployable exports on Fashion-MNIST: the export report of every TFLite mode and the
SavedModel, and int8 accuracy vs conversion time for several calibration sample sizes.

One retrain (default EfficientNet-Lite0, 1,000 real images, 100 per class) exports all four
.tflite modes and the SavedModel; then int8 is re-exported from the same run's head with each
calibration size. Conversion times are printed as ratios to the smallest sample's, measured in the
same run (the machine may be shared).

    python -m benchmarks.measure_exports [--per-class 100] [--sizes 50,100,300,500]
        [--work runs/measure_exports] [--smoke]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from benchmarks import cli
from benchmarks.data import REPO, fashion_mnist_folder
from benchmarks.timing import machine_line


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--sizes", default="50,100,300,500")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "measure_exports")
    args = cli.parse(parser, {"per_class": 10, "sizes": "10,12", "steps": 10})
    if args.smoke:  # not into the real run's folder
        args.work = Path(tempfile.mkdtemp(prefix="measure_exports_"))
    print(machine_line())
    images = fashion_mnist_folder(args.work / "images", args.per_class)
    holdout = fashion_mnist_folder(args.work / "holdout", args.per_class, subset="t10k")

    from retrainer.config import RetrainConfig
    from retrainer.exports.quantization import MODES
    from retrainer.pipeline import run

    out = args.work / "out"
    config = RetrainConfig(
        image_dir=images, output_graph=out / "output_graph.pb",
        output_labels=out / "output_labels.txt", summaries_dir=out / "logs",
        bottleneck_dir=args.work / "bottlenecks", checkpoint_path=out / "checkpoint" / "head",
        how_many_training_steps=args.steps, saved_model_dir=out / "saved_model",
        tflite_output_file=out / "model.tflite", tflite_quantization=MODES, show_progress=False,
        metrics_file=out / "metrics.json", report_html=out / "report.html",
        audit_file=out / "audit.json",
    )
    started = time.perf_counter()
    result = run(config)
    print(f"retrain: test accuracy {result.test_accuracy * 100:.1f}% (N={result.test_count}), "
          f"{time.perf_counter() - started:.0f} s; stages {json.dumps(result.seconds)}")
    print(f"{'artifact':<15} {'bytes':>10} {'accuracy':>9} {'change':>7} {'agree':>7} {'max|dp|':>8}")
    for row in result.exports:
        print(f"{row['artifact']:<15} {row['size_bytes']:>10} {row['accuracy'] * 100:>8.1f}% "
              f"{row['change_points']:>+7.1f} {row['agreement'] * 100:>6.1f}% "
              f"{row['max_probability_difference']:>8.4f}")

    measure_calibration(config, holdout, [int(size) for size in args.sizes.split(",")])


def measure_calibration(config, holdout: Path, sizes: list[int]) -> None:
    """int8 re-exported from the trained run for each calibration size: accuracy on the test
    split and on the t10k holdout (never seen in training), and conversion time."""
    import numpy as np
    import tensorflow as tf

    from retrainer.data.batches import decode_files
    from retrainer.data.discovery import discover_images
    from retrainer.data.split import TESTING, TRAINING
    from retrainer.exports.classifier import Classifier
    from retrainer.exports.tflite import write_tflite_files
    from retrainer.exports.verify import FROZEN_GRAPH, export_report
    from retrainer.extractors import create_extractor
    from retrainer.training.head_layer import HeadLayer, initial_head

    collection = discover_images(config.image_dir, config.validation_percentage,
                                 config.testing_percentage)
    extractor = create_extractor(config.tfhub_module, config.image_size)
    layer = HeadLayer(initial_head(extractor.spec.vector_size, len(collection.labels),
                                   config.seed))
    tf.train.Checkpoint(head=layer).read(str(config.checkpoint_path)).expect_partial()
    classifier = Classifier(extractor, layer.head(), collection.labels, config.final_tensor_name)
    training = [image.path for image in collection.images if image.split == TRAINING]
    testing = [image for image in collection.images if image.split == TESTING]
    held = discover_images(holdout, 0, 0).images  # every holdout image, all in "training"
    sets = {"test": testing, "holdout": held}
    decoded = {name: decode_files([image.path for image in chosen], extractor.spec.input_size)[0]
               for name, chosen in sets.items()}
    truth = {name: np.array([image.label_index for image in chosen]) for name, chosen in sets.items()}
    baseline = None
    print(f"{'calibration':>11} {'set':>8} {'N':>5} {'accuracy':>9} {'change':>7} {'agree':>7} "
          f"{'max|dp|':>8} {'seconds':>8} {'ratio':>6}")
    for size in sizes:
        path = config.tflite_output_file.with_name(f"calibration_{size}.tflite")
        started = time.perf_counter()
        write_tflite_files(classifier, {"int8": path}, size, training, config.seed)
        seconds = time.perf_counter() - started
        baseline = baseline or seconds
        for name in sets:
            frozen, row = export_report([(FROZEN_GRAPH, config.output_graph), ("int8", path)],
                                        decoded[name], truth[name])
            print(f"{size:>11} {name:>8} {len(truth[name]):>5} {row.accuracy * 100:>8.1f}% "
                  f"{row.change_points:>+7.1f} {row.agreement * 100:>6.1f}% "
                  f"{row.max_probability_difference:>8.4f} {seconds:>8.1f} "
                  f"{seconds / baseline:>6.2f}")


if __name__ == "__main__":
    main()
