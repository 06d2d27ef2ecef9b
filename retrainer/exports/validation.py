"""Validation of the deployable-export options of `RetrainConfig` (TensorFlow-free)."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Sequence

from retrainer.errors import UsageError
from retrainer.exports.quantization import MIN_CALIBRATION_IMAGES, MODES, ONNX_MODES
from retrainer.graph_contract import require_onnx_extra
from retrainer.storage import as_path

if TYPE_CHECKING:
    from retrainer.config import RetrainConfig


def validate_export_options(config: RetrainConfig) -> None:
    """Normalise and check the tflite_*, onnx_* and max_export_accuracy_drop options in place
    (the config is frozen: object.__setattr__).

    Raises:
        UsageError: naming the flag.
        ModelError: --onnx_output_file without the onnx extra installed.
    """
    for flag, choices in (("tflite", MODES), ("onnx", ONNX_MODES)):
        path = getattr(config, f"{flag}_output_file")
        if path is not None:
            if not os.fspath(path):
                raise UsageError(f"--{flag}_output_file must not be empty.")
            object.__setattr__(config, f"{flag}_output_file", as_path(path))
        object.__setattr__(config, f"{flag}_quantization",
                           _modes(f"{flag}_quantization", getattr(config, f"{flag}_quantization"),
                                  choices))
    if config.onnx_output_file is not None:
        require_onnx_extra("--onnx_output_file")
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
        if (config.tflite_output_file is None and config.saved_model_dir is None
                and config.onnx_output_file is None):
            raise UsageError(
                "--max_export_accuracy_drop compares exports with the frozen graph; pass "
                "--tflite_output_file, --onnx_output_file or --saved_model_dir too."
            )


def _modes(flag: str, value: str | Sequence[str], choices: Sequence[str]) -> tuple[str, ...]:
    """A repeatable mode flag (also comma-separated) as a tuple of distinct known modes."""
    modes = (value,) if isinstance(value, str) else tuple(value)
    modes = tuple(part.strip() for mode in modes for part in mode.split(",") if part.strip())
    unknown = [mode for mode in modes if mode not in choices]
    if unknown or not modes:
        raise UsageError(
            f"--{flag} must be one of {{{', '.join(choices)}}} (repeat it for several files). "
            f"Received: {', '.join(unknown) or 'nothing'}."
        )
    if len(set(modes)) != len(modes):
        raise UsageError(f"--{flag} lists a mode twice: {', '.join(modes)}.")
    return modes
