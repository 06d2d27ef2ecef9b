"""TFLite export: the `Classifier` converted to a `.tflite` flatbuffer in one quantization mode.

The conversion itself is `retrainer.formats.tflite` (shared with the int8 extraction engine).

Contract of the file (docs/exports.md):
- none / dynamic / float16: input float32 [1, H, W, 3] RGB in [0, 1] (label_image.py's
  `--input_mean 0 --input_std 255`), output float32 [1, C] softmax probabilities.
- int8: full integer; input uint8 [1, H, W, 3] raw pixels 0..255 (scale 1/255, zero point 0:
  the range is pinned in the graph, not left to the calibration sample), output uint8 [1, C]
  probabilities (scale 1/256, zero point 0). Activation ranges come from real training images.
- With a novelty score: a second output `novelty`, float32 [1] (int8: uint8, its range pinned to
  [0, 1], or [0, 2] for extractors with negative features, so out-of-distribution scores are not
  clipped to the calibration images' range). The probabilities stay output 0.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Iterator, Optional, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.lite.tools import flatbuffer_utils

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
from retrainer.formats.graph_contract import INPUT_MEAN, INPUT_STD, NOVELTY_OUTPUT
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
    metadata = classifier.metadata()
    description = ModelDescription(
        name=f"retrainer image classifier ({classifier.extractor.spec.name})",
        description=f"Classifies images into {len(classifier.label_names)} classes; retrained "
                    f"on {classifier.extractor.spec.name} features by retrainer.",
        input_size=classifier.extractor.spec.input_size,
        mean=INPUT_MEAN, std=INPUT_STD, labels=classifier.label_names,
        extra={key: metadata[key] for key in ("multi_label", "novelty") if key in metadata},
    )
    for mode, path in paths.items():
        started = time.perf_counter()
        quantization = QuantizationConfig(mode, max(calibration_images, MIN_CALIBRATION_IMAGES))
        model = probabilities_first(convert(classifier, quantization, calibration))
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
            return _named_outputs(classifier, pinned, pin_novelty=True)
    else:
        @tf.function(input_signature=[tf.TensorSpec([1, height, width, 3], tf.float32,
                                                    INPUT_NAME)])
        def model(images: tf.Tensor) -> dict[str, tf.Tensor]:
            return _named_outputs(classifier, images, pin_novelty=False)

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


def _named_outputs(classifier: Classifier, images: tf.Tensor,
                   pin_novelty: bool) -> dict[str, tf.Tensor]:
    """The model's outputs by name; int8 pins the novelty's range (see the module docstring)."""
    if classifier.novelty is None:
        return {OUTPUT_NAME: classifier.classify(images)}
    outputs = classifier.outputs(images)
    novelty = outputs[NOVELTY_OUTPUT]
    if pin_novelty:
        high = 1.0 if float(classifier.novelty.references.min()) >= 0 else 2.0
        novelty = tf.quantization.fake_quant_with_min_max_args(novelty, 0.0, high, num_bits=8)
    return {OUTPUT_NAME: outputs["probabilities"], NOVELTY_OUTPUT: novelty}


def probabilities_first(model: bytes) -> bytes:
    """`model` with the probabilities as output 0 (the converter orders outputs by name, which
    puts `novelty` first; label_image.py and ML Kit read output 0). Signature names are kept."""
    tree = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    signature = tree.signatureDefs[0] if tree.signatureDefs else None
    named = {item.name.decode() if isinstance(item.name, bytes) else item.name: item.tensorIndex
             for item in (signature.outputs if signature else [])}
    subgraph = tree.subgraphs[0]
    if OUTPUT_NAME not in named or len(subgraph.outputs) < 2:
        return model
    first = named[OUTPUT_NAME]
    subgraph.outputs = [first] + [index for index in subgraph.outputs if index != first]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(tree))


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
