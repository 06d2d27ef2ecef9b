"""TFLite export: the `Classifier` converted to a `.tflite` flatbuffer in one quantization mode.

All TFLite conversion lives here, so the route can move from `tf.lite.TFLiteConverter` (whose
quantizing is deprecated in favour of the LiteRT tools) without touching callers.

Contract of the file (docs/exports.md):
- none / dynamic / float16: input float32 [1, H, W, 3] RGB in [0, 1] (label_image.py's
  `--input_mean 0 --input_std 255`), output float32 [1, C] softmax probabilities.
- int8: full integer; input uint8 [1, H, W, 3] raw pixels 0..255 (scale 1/255, zero point 0:
  the range is pinned in the graph, not left to the calibration sample), output uint8 [1, C]
  probabilities (scale 1/256, zero point 0). Activation ranges come from real training images.
"""

from __future__ import annotations

import logging
from typing import Iterator, Optional

import numpy as np
import tensorflow as tf

from retrainer.errors import DataError
from retrainer.exports.classifier import Classifier
from retrainer.exports.quantization import DYNAMIC, FLOAT16, INT8, QuantizationConfig

log = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"


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
    if quantization.mode == INT8:
        _check_calibration(calibration, quantization)

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

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [model.get_concrete_function()], classifier
    )
    if quantization.mode == DYNAMIC:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization.mode == FLOAT16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization.mode == INT8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: _representative(calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    return bytes(converter.convert())


def _check_calibration(calibration: Optional[np.ndarray], quantization: QuantizationConfig) -> None:
    from retrainer.exports.quantization import MIN_CALIBRATION_IMAGES

    count = 0 if calibration is None else len(calibration)
    if count < MIN_CALIBRATION_IMAGES:
        raise DataError(
            f"--tflite_quantization int8 calibrates on real training images and needs at least "
            f"{MIN_CALIBRATION_IMAGES} (default sample {quantization.calibration_images}); the "
            f"training split has {count} decodable images. Add training images, or export "
            "--tflite_quantization dynamic or float16, which need no calibration."
        )


def _representative(calibration: np.ndarray) -> Iterator[list[np.ndarray]]:
    """One float32 [1, H, W, 3] image in [0, 1] at a time, as the model is fed."""
    for pixels in calibration:
        yield [pixels[np.newaxis].astype(np.float32) / 255.0]
