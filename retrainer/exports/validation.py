"""Validation of the deployable-export options of `RetrainConfig` (TensorFlow-free)."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from retrainer.errors import UsageError
from retrainer.exports.quantization import MIN_CALIBRATION_IMAGES, MODES
from retrainer.io.storage import as_path

if TYPE_CHECKING:
    from retrainer.config import RetrainConfig


def validate_export_options(config: RetrainConfig) -> None:
    """Normalise and check tflite_output_file, tflite_quantization, tflite_calibration_images and
    max_export_accuracy_drop in place (the config is frozen: object.__setattr__).

    Raises:
        UsageError: naming the flag.
    """
    if config.tflite_output_file is not None:
        if not os.fspath(config.tflite_output_file):
            raise UsageError("--tflite_output_file must not be empty.")
        object.__setattr__(config, "tflite_output_file", as_path(config.tflite_output_file))
    modes = config.tflite_quantization
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    modes = tuple(part.strip() for mode in modes for part in mode.split(",") if part.strip())
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not modes:
        raise UsageError(
            f"--tflite_quantization must be one of {{{', '.join(MODES)}}} (repeat it for several "
            f"files). Received: {', '.join(unknown) or 'nothing'}."
        )
    if len(set(modes)) != len(modes):
        raise UsageError(f"--tflite_quantization lists a mode twice: {', '.join(modes)}.")
    object.__setattr__(config, "tflite_quantization", modes)
    if config.tflite_calibration_images < MIN_CALIBRATION_IMAGES:
        raise UsageError(
            f"--tflite_calibration_images must be at least {MIN_CALIBRATION_IMAGES}. "
            f"Received: {config.tflite_calibration_images}."
        )
    drop = config.max_export_accuracy_drop
    if drop is not None:
        if not (math.isfinite(drop) and drop >= 0):
            raise UsageError(
                f"--max_export_accuracy_drop must be a number of points >= 0. Received: {drop!r}."
            )
        if config.tflite_output_file is None and config.saved_model_dir is None:
            raise UsageError(
                "--max_export_accuracy_drop compares exports with the frozen graph; pass "
                "--tflite_output_file or --saved_model_dir too."
            )
