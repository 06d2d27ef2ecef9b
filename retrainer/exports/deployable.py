"""The pipeline's deployable-export steps: .tflite and .onnx files and the export report.

Thin glue between `RetrainConfig` and the export modules (`tflite`, `onnx`, `verify`), so that
`pipeline.run` only calls them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from retrainer.exports.quantization import (
    INT8,
    MIN_CALIBRATION_IMAGES,
    NONE,
    onnx_paths,
    tflite_paths,
    too_few_calibration_images,
)
from retrainer.split import TRAINING

log = logging.getLogger(__name__)


def check_calibration_supply(config, collection) -> None:
    """Before the long work: int8 needs at least MIN_CALIBRATION_IMAGES training images.

    Raises:
        DataError: saying how many are needed and how many the training split has.
    """
    int8_tflite = config.tflite_output_file is not None and INT8 in config.tflite_quantization
    int8_onnx = config.onnx_output_file is not None and INT8 in config.onnx_quantization
    if not (int8_tflite or int8_onnx):
        return
    training = sum(image.split == TRAINING for image in collection.images)
    if training < MIN_CALIBRATION_IMAGES:
        raise too_few_calibration_images(training, config.tflite_calibration_images,
                                         f"the training split of {collection.image_dir}")
    if training < config.tflite_calibration_images:
        log.warning("int8 calibration: only %d training images, fewer than "
                    "--tflite_calibration_images %d; calibrating on all of them.",
                    training, config.tflite_calibration_images)


def write_tflite_exports(config, classifier, training_images: Sequence) -> dict[str, Any]:
    """Write one .tflite per --tflite_quantization mode; returns {"tflite_output_file": path(s)}."""
    if config.tflite_output_file is None:
        return {}
    from retrainer.exports.tflite import write_tflite_files

    paths = tflite_paths(config.tflite_output_file, config.tflite_quantization)
    return _written("tflite_output_file", write_tflite_files, paths, config, classifier,
                    training_images)


def write_onnx_exports(config, classifier, training_images: Sequence) -> dict[str, Any]:
    """Write one .onnx per --onnx_quantization mode; returns {"onnx_output_file": path(s)}."""
    if config.onnx_output_file is None:
        return {}
    from retrainer.exports.onnx import write_onnx_files

    paths = onnx_paths(config.onnx_output_file, config.onnx_quantization)
    return _written("onnx_output_file", write_onnx_files, paths, config, classifier,
                    training_images)


def _written(flag: str, write, paths: dict[str, Path], config, classifier,
             training_images: Sequence) -> dict[str, Any]:
    """Run a format's writer (int8 calibrates on the run's seeded sample of training images);
    {flag: the path, or the paths of several modes}."""
    write(classifier, paths, config.tflite_calibration_images,
          [image.path for image in training_images], config.seed)
    written = list(paths.values())
    return {flag: written[0] if len(written) == 1 else written}


def verify_exports(config, outputs: dict[str, Any], test_images: Sequence,
                   input_size: tuple[int, int]) -> list:
    """The export report when a .tflite or SavedModel was written; [] otherwise."""
    from retrainer.exports.verify import FROZEN_GRAPH, export_report

    artifacts: list[tuple[str, Path]] = []
    if config.tflite_output_file is not None:
        artifacts += [(f"tflite {mode}", path) for mode, path in
                      tflite_paths(config.tflite_output_file, config.tflite_quantization).items()]
    if config.saved_model_dir is not None:
        artifacts.append(("saved_model", config.saved_model_dir))
    if "onnx_output_file" in outputs:  # not after a failed conversion
        artifacts += [("onnx" if mode == NONE else f"onnx {mode}", path) for mode, path in
                      onnx_paths(config.onnx_output_file, config.onnx_quantization).items()]
    if not artifacts:
        return []
    if not test_images:
        log.warning("No test images: skipping the export report.")
        return []
    from retrainer.exports._pixels import decode_files

    pixels, ok = decode_files([image.path for image in test_images], input_size)
    labels = np.array([image.label_index for image in test_images], np.int64)
    return export_report([(FROZEN_GRAPH, config.output_graph)] + artifacts, pixels[ok],
                         labels[ok])


def check_export_accuracy(config, reports: Sequence) -> None:
    """Apply --max_export_accuracy_drop to the export report (no-op without the flag).

    Raises:
        ExportMismatchError: an export lost more than --max_export_accuracy_drop points.
    """
    from retrainer.exports.verify import check_accuracy_drop

    if config.max_export_accuracy_drop is not None and reports:
        check_accuracy_drop(reports, config.max_export_accuracy_drop)
