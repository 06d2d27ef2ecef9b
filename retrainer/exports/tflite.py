"""TFLite export: the `Classifier` converted to a `.tflite` flatbuffer in one quantization mode.

The conversion itself is `retrainer.formats.tflite` (shared with the int8 extraction engine).

Contract of the file (docs/exports.md):
- none / dynamic / float16: input float32 [1, H, W, 3] RGB in [0, 1] (label_image.py's
  `--input_mean 0 --input_std 255`), output float32 [1, C] softmax probabilities.
- int8: full integer; input uint8 [1, H, W, 3] raw pixels 0..255 (scale 1/255, zero point 0:
  the range is pinned in the graph, not left to the calibration sample), output uint8 [1, C]
  probabilities (scale 1/256, zero point 0). Activation ranges come from real training images.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Iterator, Optional, Sequence

import numpy as np
import tensorflow as tf

from retrainer.data.batches import decode_files
from retrainer.exports.classifier import Classifier
from retrainer.exports.quantization import (
    FLOAT16,
    INT8,
    MIN_CALIBRATION_IMAGES,
    NONE,
    QuantizationConfig,
    too_few_calibration_images,
)
from retrainer.formats.graph_contract import INPUT_MEAN, INPUT_STD
from retrainer.formats.tflite import full_integer_model
from retrainer.formats.tflite_metadata import ModelDescription, add_metadata
from retrainer.io.atomic import write_bytes_atomically
from retrainer.io.storage import AnyPath

log = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"


def write_tflite_files(
    classifier: Classifier,
    paths: dict[str, AnyPath],
    calibration_images: int,
    training_files: Sequence[os.PathLike[str] | str],
    seed: int,
) -> dict[str, AnyPath]:
    """Convert the classifier once per mode, add the metadata, write each file atomically.

    Args:
        classifier: extractor + trained head.
        paths: {mode: .tflite path} (`quantization.tflite_paths`).
        calibration_images: int8's sample size.
        training_files: the decodable training images, for int8 calibration.
        seed: picks the calibration sample.

    Returns:
        `paths`, once every file is written.

    Raises:
        DataError: int8 without enough training images.
    """
    calibration = None
    if INT8 in paths:
        chosen = seeded_sample(calibration_images, len(training_files), seed)
        pixels, ok = decode_files([training_files[index] for index in chosen],
                                  classifier.extractor.spec.input_size)
        calibration = pixels[ok]
    description = ModelDescription(
        name=f"retrainer image classifier ({classifier.extractor.spec.name})",
        description=f"Classifies images into {len(classifier.label_names)} classes; retrained "
                    f"on {classifier.extractor.spec.name} features by retrainer.",
        input_size=classifier.extractor.spec.input_size,
        mean=INPUT_MEAN, std=INPUT_STD, labels=classifier.label_names,
    )
    for mode, path in paths.items():
        started = time.perf_counter()
        quantization = QuantizationConfig(mode, max(calibration_images, MIN_CALIBRATION_IMAGES))
        model = convert(classifier, quantization, calibration)
        write_bytes_atomically(path, add_metadata(model, description))
        log.info("Wrote %s (%s, %d bytes) in %.1f s", path, mode, path.stat().st_size,
                 time.perf_counter() - started)
    return paths


def convert(
    classifier: Classifier,
    quantization: QuantizationConfig,
    calibration: Optional[np.ndarray] = None,
) -> bytes:
    """The classifier as `.tflite` bytes (without metadata; see `tflite_metadata`).

    Args:
        classifier: extractor + trained head.
        quantization: the mode.
        calibration: int8 only: uint8 [N, H, W, 3] training pixels, decoded as training decodes.

    Returns:
        The flatbuffer's bytes.

    Raises:
        DataError: int8 without enough calibration images.
    """
    height, width = classifier.extractor.spec.input_size
    sample = _check_calibration(calibration, quantization) if quantization.mode == INT8 else None
    if sample is not None:
        # Pin the input range to exactly [0, 1]: uint8 input q then means q / 255, raw pixels.
        @tf.function(input_signature=[tf.TensorSpec([1, height, width, 3], tf.float32,
                                                    INPUT_NAME)])
        def model(images: tf.Tensor) -> dict[str, tf.Tensor]:
            pinned = tf.quantization.fake_quant_with_min_max_args(images, 0.0, 1.0, num_bits=8)
            return {OUTPUT_NAME: classifier.classify(pinned)}
    else:
        @tf.function(input_signature=[tf.TensorSpec([1, height, width, 3], tf.float32,
                                                    INPUT_NAME)])
        def model(images: tf.Tensor) -> dict[str, tf.Tensor]:
            return {OUTPUT_NAME: classifier.classify(images)}

    if sample is not None:
        return full_integer_model(model.get_concrete_function(), _representative(sample),
                                  classifier, uint8_input=True, uint8_output=True)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [model.get_concrete_function()], classifier
    )
    converter.optimizations = [tf.lite.Optimize.DEFAULT] if quantization.mode != NONE else []
    if quantization.mode == FLOAT16:
        converter.target_spec.supported_types = [tf.float16]
    return bytes(converter.convert())


def _check_calibration(calibration: Optional[np.ndarray], quantization: QuantizationConfig
                       ) -> np.ndarray:
    """`calibration`, once it holds enough images for int8."""
    count = 0 if calibration is None else len(calibration)
    if calibration is None or count < MIN_CALIBRATION_IMAGES:
        raise too_few_calibration_images(count, quantization.calibration_images,
                                         "the calibration sample (decodable training images)")
    return calibration


def _representative(calibration: np.ndarray) -> Iterator[list[np.ndarray]]:
    """One float32 [1, H, W, 3] image in [0, 1] at a time, as the model is fed."""
    for pixels in calibration:
        yield [pixels[np.newaxis].astype(np.float32) / 255.0]


def seeded_sample(count: int, available: int, seed: int) -> np.ndarray:
    """`min(count, available)` distinct sorted indices into `available` items, fixed by `seed`."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(available, size=min(count, available), replace=False))
