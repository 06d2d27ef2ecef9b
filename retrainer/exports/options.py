"""What the export stage writes: `RetrainConfig.exports`, checked when it is built.

Free of TensorFlow, so that the config (and `retrain --help`) can build it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Optional, Sequence, Union

from retrainer.errors import UsageError, require
from retrainer.exports.quantization import (
    MIN_CALIBRATION_IMAGES,
    MODES,
    NONE,
    onnx_paths,
    tflite_paths,
)
from retrainer.formats.graph_contract import INPUT_OP, require_onnx_extra
from retrainer.io.storage import AnyPath

AUTO_TTA, NO_TTA, FLIP = "auto", "none", "flip"
TTA_MODES = (AUTO_TTA, NO_TTA, FLIP)  # --tta: test-time augmentation inside the exports
_OP_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\-/]*$")  # TensorFlow's rule for op names


def quantization_modes(flag: str, value: Union[str, Sequence[str]],
                       choices: Sequence[str] = MODES) -> tuple[str, ...]:
    """A repeatable mode flag (--tflite_quantization, --onnx_quantization) as a tuple of modes:
    "int8,none" and repeated flags alike.

    Raises:
        UsageError: an unknown mode, none at all, or one mode twice.
    """
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


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """The frozen graph and labels always; intermediate graphs, SavedModel, .tflite on request.

    Attributes mirror retrain's flags (docs/exports.md); paths are already `as_path`ed and
    `tflite_quantization` is a tuple of modes (`quantization_modes`).

    Raises:
        UsageError: on construction, naming the flag.
    """

    output_graph: AnyPath
    output_labels: AnyPath
    final_tensor_name: str
    intermediate_store_frequency: int
    intermediate_output_graphs_dir: AnyPath
    saved_model_dir: Optional[AnyPath]
    tflite_output_file: Optional[AnyPath]
    tflite_quantization: tuple[str, ...]
    onnx_output_file: Optional[AnyPath]
    onnx_quantization: tuple[str, ...]
    tflite_calibration_images: int
    max_export_accuracy_drop: Optional[float]
    tta: str
    seed: int  # picks int8's calibration sample

    def __post_init__(self) -> None:
        require("intermediate_store_frequency", self.intermediate_store_frequency,
                self.intermediate_store_frequency >= 0, "0 (never) or a number of steps")
        require("final_tensor_name", self.final_tensor_name,
                bool(_OP_NAME.match(self.final_tensor_name)) and self.final_tensor_name != INPUT_OP,
                "a TensorFlow op name other than Placeholder (letters, digits, _ . - /)")
        if self.tflite_calibration_images < MIN_CALIBRATION_IMAGES:
            raise UsageError(
                f"--tflite_calibration_images must be at least {MIN_CALIBRATION_IMAGES}. "
                f"Received: {self.tflite_calibration_images}."
            )
        require("tta", self.tta, self.tta in TTA_MODES, " or ".join(TTA_MODES))
        drop = self.max_export_accuracy_drop
        if drop is not None:
            require("max_export_accuracy_drop", drop, math.isfinite(drop) and drop >= 0,
                    "a number of points >= 0")
            if (self.tflite_output_file is None and self.saved_model_dir is None
                    and self.onnx_output_file is None):
                raise UsageError(
                    "--max_export_accuracy_drop compares exports with the frozen graph; pass "
                    "--tflite_output_file, --onnx_output_file or --saved_model_dir too."
                )
        if self.onnx_output_file is not None:
            require_onnx_extra("--onnx_output_file")
        if self.output_graph == self.output_labels:
            raise UsageError(
                f"--output_graph and --output_labels are the same file: {self.output_graph}"
            )

    @property
    def tflite_files(self) -> dict[str, AnyPath]:
        """{mode: .tflite path} of the TFLite exports; {} without --tflite_output_file."""
        if self.tflite_output_file is None:
            return {}
        return tflite_paths(self.tflite_output_file, self.tflite_quantization)

    @property
    def onnx_files(self) -> dict[str, AnyPath]:
        """{mode: .onnx path} of the ONNX exports; {} without --onnx_output_file."""
        if self.onnx_output_file is None:
            return {}
        return onnx_paths(self.onnx_output_file, self.onnx_quantization)

    @property
    def deployable_files(self) -> list[tuple[str, AnyPath]]:
        """(flag, path) of every .tflite and .onnx file the run will write."""
        return ([("tflite_output_file", path) for path in self.tflite_files.values()]
                + [("onnx_output_file", path) for path in self.onnx_files.values()])

    def verified_artifacts(self, onnx_written: bool = True) -> list[tuple[str, AnyPath]]:
        """(name, path) of each export the report compares with the frozen graph (the ONNX files
        only when their conversion succeeded)."""
        artifacts: list[tuple[str, AnyPath]] = [
            (f"tflite {mode}", path) for mode, path in self.tflite_files.items()]
        if self.saved_model_dir is not None:
            artifacts.append(("saved_model", self.saved_model_dir))
        if onnx_written:
            artifacts += [("onnx" if mode == NONE else f"onnx {mode}", path)
                          for mode, path in self.onnx_files.items()]
        return artifacts
