"""How a `.tflite` export is quantized: one small frozen object, passed down (as Model Maker's).

`QuantizationConfig(mode)` for each mode of `--tflite_quantization`; the converter
(`retrainer.exports.tflite`) reads only this object, never flags.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from retrainer.errors import DataError
from retrainer.io.storage import AnyPath

NONE, DYNAMIC, FLOAT16, INT8 = "none", "dynamic", "float16", "int8"
MODES = (NONE, DYNAMIC, FLOAT16, INT8)
ONNX_MODES = (NONE, INT8)  # int8: ONNX Runtime's static quantization (exports/onnx.py)
# Chosen by measurement (docs/exports.md, benchmarks/measure_exports.py): on Fashion-MNIST
# with EfficientNet-Lite0, accuracy stopped changing beyond ~100 images while conversion time grows
# linearly with the sample.
DEFAULT_CALIBRATION_IMAGES = 100
# Below this, the activation ranges come from too few images to trust.
MIN_CALIBRATION_IMAGES = 10


@dataclasses.dataclass(frozen=True)
class QuantizationConfig:
    """One quantization mode of the TFLite export.

    Attributes:
        mode: one of MODES: none (float32), dynamic (int8 weights, float activations), float16
            (float16 weights), int8 (full integer, uint8 input and output).
        calibration_images: int8 only: how many training images calibrate the activation ranges.
    """

    mode: str = NONE
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}. Received: mode={self.mode!r}")
        if self.calibration_images < MIN_CALIBRATION_IMAGES:
            raise ValueError(
                f"calibration_images must be at least {MIN_CALIBRATION_IMAGES}. "
                f"Received: calibration_images={self.calibration_images}"
            )


def tflite_paths(path: AnyPath, modes: Sequence[str]) -> dict[str, AnyPath]:
    """Where each mode's `.tflite` goes (`export_paths`): model.tflite -> model_int8.tflite."""
    return export_paths(path, modes, ".tflite")


def onnx_paths(path: AnyPath, modes: Sequence[str]) -> dict[str, AnyPath]:
    """Where each mode's `.onnx` goes (`export_paths`): model.onnx -> model_int8.onnx."""
    return export_paths(path, modes, ".onnx")


def export_paths(path: AnyPath, modes: Sequence[str], suffix: str) -> dict[str, AnyPath]:
    """Where each mode's file goes: `path` itself for one mode; for several,
    `<stem>_<mode><path's suffix, else suffix>` beside it."""
    if len(modes) == 1:
        return {modes[0]: path}
    return {mode: path.with_name(f"{path.stem}_{mode}{path.suffix or suffix}") for mode in modes}


def too_few_calibration_images(available: int, requested: int, where: str) -> DataError:
    """The error for int8 without enough training images to calibrate on."""
    return DataError(
        f"--tflite_quantization int8 calibrates on real training images and needs at least "
        f"{MIN_CALIBRATION_IMAGES} (default sample {requested}); {where} has {available}. Add "
        "training images, or export --tflite_quantization dynamic or float16, which need no "
        "calibration."
    )
