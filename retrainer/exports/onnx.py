"""ONNX export: the `Classifier` converted by tf2onnx, for ONNX Runtime, TensorRT, OpenVINO, web.

Contract of the file (docs/exports.md):
- input `images`: float32 [N, H, W, 3] RGB in [0, 1], the frozen graph's contract (the extractor's
  own normalisation is inside the model);
- output `probabilities`: float32 [N, C] softmax probabilities (a multi-label model: one sigmoid
  per label), in label order; output `novelty`: float32 [N], when the run fitted a novelty score.
  Outputs are looked up by name, never by position (see `serving_outputs`);
- `metadata_props`: `format`, `labels` (a JSON list), `input_mean` / `input_std` (label_image.py's
  (pixel - mean) / std over 0..255 pixels: 0 and 255), `input_height` / `input_width`, `extractor`
  (JSON) and the input and output names, so a reader needs nothing else; `multi_label`
  (`{"thresholds": {label: t}}`) and `novelty` (`{"output_layer": "novelty", "threshold": t,
  ...}`) as JSON, the entries of the graph's `.meta.json`.

Opset `OPSET` was chosen by measurement (scripts/measure_onnx.py, docs/exports.md). `int8` is ONNX
Runtime's static quantization (QDQ, per-channel int8 weights in 7 bits, uint8 activations)
calibrated on the same seeded sample of training images as the TFLite int8 export; its input and
output stay float32, so every reader feeds it exactly like the float model. tf2onnx, onnx and
onnxruntime come from the `onnx` extra: `pip install 'retrainer[onnx]'`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import tensorflow as tf

from retrainer.data.batches import decode_files
from retrainer.errors import ModelError
from retrainer.exports.classifier import Classifier
from retrainer.exports.quantization import (
    INT8,
    MIN_CALIBRATION_IMAGES,
    too_few_calibration_images,
)
from retrainer.exports.tflite import seeded_sample
from retrainer.formats.graph_contract import (
    INPUT_MEAN,
    INPUT_STD,
    NOVELTY_OUTPUT,
    ONNX_FORMAT,
    ONNX_INPUT,
    ONNX_OUTPUT,
)
from retrainer.io.atomic import write_bytes_atomically

log = logging.getLogger(__name__)

BATCH_DIMENSION = "N"
# Measured (docs/onnx.md): opsets 11-18 give the same answers; 18 swaps GlobalAveragePool for a
# slower ReduceMean. 13 is the lowest with per-channel QuantizeLinear/DequantizeLinear (the int8
# mode), so both modes share it; ONNX Runtime >= 1.8 (and onnxruntime-web), TensorRT >= 8, OpenVINO.
OPSET = 13
CALIBRATION_BATCH = 8


def serving_outputs(classifier: Classifier, images: tf.Tensor) -> dict[str, tf.Tensor]:
    """Every output of the ONNX model, by name: `probabilities`, and `novelty` when fitted."""
    outputs = classifier.outputs(images)
    return {ONNX_OUTPUT: outputs["probabilities"],
            **({NOVELTY_OUTPUT: outputs[NOVELTY_OUTPUT]} if NOVELTY_OUTPUT in outputs else {})}


def metadata_props(classifier: Classifier) -> dict[str, str]:
    """The ONNX `metadata_props`: everything label-image and other readers need, as strings."""
    spec = classifier.extractor.spec
    document = classifier.metadata()
    height, width = spec.input_size
    return {
        "format": ONNX_FORMAT,
        "labels": json.dumps(list(classifier.label_names), ensure_ascii=False),
        "input_name": ONNX_INPUT,
        "output_name": ONNX_OUTPUT,
        "input_mean": repr(float(INPUT_MEAN)),
        "input_std": repr(float(INPUT_STD)),
        "input_height": str(height),
        "input_width": str(width),
        "extractor": json.dumps(document["extractor"], ensure_ascii=False),
        # A multi-label model's thresholds and the novelty threshold, as in the `.meta.json`.
        **{key: json.dumps(document[key], ensure_ascii=False)
           for key in ("multi_label", "novelty") if key in document},
    }


def convert(classifier: Classifier, opset: int = OPSET) -> Any:
    """The classifier as an `onnx.ModelProto`, checked, with its metadata.

    Raises:
        ModelError: tf2onnx cannot convert it (one line naming the extractor), or the result
            fails ONNX's checker.
    """
    import onnx  # the optional [onnx] extra, asked for by --onnx_output_file
    import tf2onnx

    height, width = classifier.extractor.spec.input_size
    signature = [tf.TensorSpec([None, height, width, 3], tf.float32, ONNX_INPUT)]

    @tf.function(input_signature=signature)
    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return serving_outputs(classifier, images)

    name = classifier.extractor.spec.name
    try:
        with _quiet("tf2onnx"):
            model, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=opset)
        onnx.checker.check_model(model)
    except Exception as error:  # tf2onnx raises anything from KeyError to its own errors
        raise ModelError(
            f"cannot convert the classifier built on extractor {name} to ONNX (opset {opset}): "
            f"{_first_line(error)}; the other exports were written, drop --onnx_output_file"
        ) from error
    _name_batch_dimension(model)
    _probabilities_first(model)
    _drop_unused_domains(model)
    model.producer_name = "retrainer"
    model.doc_string = (f"Image classifier retrained on {name} features by retrainer: images "
                        f"float32 [N, {height}, {width}, 3] RGB in [0, 1] -> {ONNX_OUTPUT} "
                        f"float32 [N, {len(classifier.label_names)}].")
    onnx.helper.set_model_props(model, metadata_props(classifier))
    return model


def write_onnx_files(
    classifier: Classifier,
    paths: dict[str, Path],
    calibration_images: int,
    training_files: Sequence[os.PathLike[str] | str],
    seed: int,
) -> dict[str, Path]:
    """Convert once, quantize if asked, write each file atomically.

    Args:
        classifier: extractor + trained head.
        paths: {mode: .onnx path} for modes in ONNX_MODES.
        calibration_images: int8's sample size (the TFLite int8 export's).
        training_files: the decodable training images, for int8 calibration.
        seed: picks the calibration sample (the same sample as the TFLite int8 export's).

    Returns:
        `paths`, once every file is written.

    Raises:
        ModelError: conversion or quantization failed.
        DataError: int8 without enough training images.
    """
    started = time.perf_counter()
    model = convert(classifier)
    data = model.SerializeToString()
    log.info("Converted the classifier to ONNX (opset %d) in %.1f s", OPSET,
             time.perf_counter() - started)
    for mode, path in paths.items():
        started = time.perf_counter()
        if mode == INT8:
            chosen = seeded_sample(calibration_images, len(training_files), seed)
            pixels, ok = decode_files([training_files[index] for index in chosen],
                                      classifier.extractor.spec.input_size)
            written = quantize_int8(data, pixels[ok], classifier.extractor.spec.name)
        else:
            written = data
        write_bytes_atomically(path, written)
        log.info("Wrote %s (%s, %d bytes) in %.1f s", path, mode, len(written),
                 time.perf_counter() - started)
    return paths


def quantize_int8(model: bytes, calibration: np.ndarray, extractor_name: str = "") -> bytes:
    """ONNX Runtime static quantization (QDQ): int8 weights per channel in 7 bits (so the file
    gives the same answers on CPUs with and without VNNI), uint8 activations.

    Args:
        model: the float model's bytes (`convert`).
        calibration: uint8 [N, H, W, 3] training pixels, decoded as training decodes them.
        extractor_name: for the error message.

    Returns:
        The quantized model's bytes, its metadata kept; input and output stay float32.

    Raises:
        DataError: fewer than MIN_CALIBRATION_IMAGES calibration images.
        ModelError: ONNX Runtime's quantizer failed.
    """
    import onnx  # the optional [onnx] extra, asked for by --onnx_quantization int8
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) < MIN_CALIBRATION_IMAGES:
        raise too_few_calibration_images(len(calibration), MIN_CALIBRATION_IMAGES,
                                         "the calibration sample (decodable training images)")

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(range(0, len(calibration), CALIBRATION_BATCH))

        def get_next(self) -> Optional[dict[str, np.ndarray]]:
            start = next(self._batches, None)
            if start is None:
                return None
            batch = calibration[start:start + CALIBRATION_BATCH]
            return {ONNX_INPUT: batch.astype(np.float32) / np.float32(255.0)}

    with tempfile.TemporaryDirectory() as scratch:
        float_path, prepared, quantized = (Path(scratch) / name for name in
                                           ("float.onnx", "prepared.onnx", "int8.onnx"))
        float_path.write_bytes(model)
        try:
            with _quiet(""):  # the root logger
                quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
                quantize_static(
                    str(prepared), str(quantized), Batches(),
                    # 7-bit weights: CPUs without VNNI (AVX2, AVX-512F) multiply uint8 by int8
                    # pairwise into saturating int16 (VPMADDUBSW), which full-range weights
                    # overflow (FM 1k on an AVX2 EPYC: 84.1 % vs the graph's 90.7 %; 7 bits: 90.7 %)
                    quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                )
        except Exception as error:  # the quantizer's own failures, whatever their type
            raise ModelError(f"cannot quantize the ONNX model of extractor {extractor_name} to "
                             f"int8: {_first_line(error)}") from error
        result = onnx.load_from_string(quantized.read_bytes())
    source = onnx.load_from_string(model)
    del result.metadata_props[:]
    result.metadata_props.extend(source.metadata_props)
    result.doc_string = source.doc_string + " int8 (ONNX Runtime static quantization)."
    _drop_unused_domains(result)
    return result.SerializeToString()


def _drop_unused_domains(model: Any) -> None:
    """Keep only the operator sets the graph uses: ONNX Runtime's quantizer imports eight domains
    (training, preview, com.microsoft, ...) that no node needs, and a reader that checks
    domains (`retrainer.security`) would have to refuse or ignore them."""
    used = {node.domain for node in model.graph.node} | {""}
    kept = [entry for entry in model.opset_import if entry.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)


def _probabilities_first(model: Any) -> None:
    """tf2onnx orders a dict's outputs by name ("novelty" first); a reader that takes the first
    output, as many do, should get the probabilities."""
    outputs = sorted(model.graph.output, key=lambda value: value.name != ONNX_OUTPUT)
    del model.graph.output[:]
    model.graph.output.extend(outputs)


def _name_batch_dimension(model: Any) -> None:
    """tf2onnx calls the free batch dimension unk__<n>; inputs and outputs share the name N."""
    for value in (*model.graph.input, *model.graph.output):
        dimension = value.type.tensor_type.shape.dim[0]
        if not dimension.HasField("dim_value"):
            dimension.dim_param = BATCH_DIMENSION


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Silence a converter's logger meanwhile: tf2onnx logs every rewrite (and an unsupported op
    as ERROR lines before the checker's verdict, which becomes one ModelError line); ONNX Runtime's
    quantizer logs each weight scale it widens on the root logger."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
