"""A `.tflite` file for `label-image`: float (none/dynamic/float16) or full-integer (uint8 I/O).

Runs on `ai-edge-litert`'s interpreter when installed (`pip install '.[litert]'`), else on
`tf.lite.Interpreter`, whose deprecation warning is silenced. Input normalization and labels come
from flags, else the file's own TFLite metadata (`retrainer.formats.tflite_metadata`), else the
defaults (mean 0, std 255) and `output_labels.txt` beside the file. A uint8 input is fed the
normalized pixels quantized with the tensor's own scale and zero point (for retrain's int8 export,
1/255 and 0: the raw pixels).
"""

from __future__ import annotations

import struct
from typing import Any, Optional

import numpy as np

from retrainer.classify.config import (
    ClassifyConfig,
    ModelSpec,
    check_size_flags,
    flag_or,
    resolve_labels,
    retrainer_extras,
)
from retrainer.errors import ModelError
from retrainer.formats.graph_contract import INPUT_MEAN, INPUT_STD, NOVELTY_OUTPUT
from retrainer.formats.tflite import new_interpreter
from retrainer.formats.tflite_metadata import read_metadata
from retrainer.io.host import filtered_stderr, usable_cpus


def make_interpreter(model: bytes) -> Any:
    """An interpreter for `model`, tensors allocated: LiteRT's when installed, else
    TensorFlow's (deprecated).

    The runtime's C++ "INFO: Created TensorFlow Lite XNNPACK delegate" line on file descriptor 2
    is dropped (label-image's stderr is for warnings); anything else it prints is passed on.
    """
    with filtered_stderr(lambda line: not line.startswith("INFO: ")):
        interpreter = new_interpreter(model, usable_cpus())
        interpreter.allocate_tensors()  # applies the XNNPACK delegate
    return interpreter


class TFLiteModel:
    """A `.tflite` in an interpreter: `outputs(pixels)` for uint8 images, one image per invoke."""

    kind = "TFLite model"

    def __init__(self, config: ClassifyConfig, data: bytes) -> None:
        path = config.graph
        try:
            self._interpreter = make_interpreter(data)
        except (ValueError, RuntimeError) as error:
            raise ModelError(
                f"cannot load TFLite model {path}: truncated or corrupt ({_first_line(error)}); "
                "export it again (retrain --tflite_output_file)"
            ) from None
        try:
            metadata = read_metadata(data)
        except (ValueError, IndexError, struct.error) as error:
            raise ModelError(f"TFLite model {path} has unreadable metadata: {error}") from None
        inputs, outputs = self._interpreter.get_input_details(), self._interpreter.get_output_details()
        if len(inputs) != 1 or len(inputs[0]["shape"]) != 4 or inputs[0]["shape"][3] != 3:
            raise ModelError(f"TFLite model {path} does not take one [1, H, W, 3] image input")
        self._input, self._output = inputs[0], outputs[0]
        self._novelty = _novelty_output(self._interpreter, outputs)
        size = (int(self._input["shape"][1]), int(self._input["shape"][2]))
        check_size_flags(config, size, "TFLite model")
        labels, self.labels_source = resolve_labels(
            config, metadata.labels if metadata else None, f"the metadata of {config.graph}",
            "TFLite model", "no label metadata")
        thresholds, novelty_threshold = retrainer_extras(
            metadata.extra if metadata is not None else None, labels,
            f"the metadata of {path}")
        if self._novelty is None:
            novelty_threshold = None
        self.spec = ModelSpec(
            input_layer=self._input["name"],
            output_layer=self._output["name"],
            input_size=size,
            input_mean=flag_or(INPUT_MEAN, config.input_mean, metadata.mean if metadata else None),
            input_std=flag_or(INPUT_STD, config.input_std, metadata.std if metadata else None),
            labels=labels,
            thresholds=thresholds,
            novelty_threshold=novelty_threshold,
        )
        self.classes = int(self._output["shape"][-1])

    def outputs(self, pixels: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """uint8 [N, H, W, 3] RGB -> (float32 [N, C] scores, float32 [N] novelty or None),
        dequantized for uint8 outputs."""
        rows, novelty = [], []
        for image in pixels:
            self._interpreter.set_tensor(self._input["index"], self._feed(image[np.newaxis]))
            self._interpreter.invoke()
            rows.append(_dequantize(self._output,
                                    self._interpreter.get_tensor(self._output["index"])[0]))
            if self._novelty is not None:
                value = self._interpreter.get_tensor(self._novelty["index"]).reshape(-1)[0]
                novelty.append(_dequantize(self._novelty, value))
        return np.stack(rows), (np.array(novelty, np.float32) if self._novelty else None)

    def _feed(self, pixels: np.ndarray) -> np.ndarray:
        normalized = (pixels.astype(np.float32) - self.spec.input_mean) / self.spec.input_std
        dtype = self._input["dtype"]
        if dtype == np.float32:
            return normalized
        scale, zero_point = self._input["quantization"]
        limits = np.iinfo(dtype)
        quantized = np.round(normalized / scale + zero_point)
        return np.clip(quantized, limits.min, limits.max).astype(dtype)

    def close(self) -> None:
        self._interpreter = None


def _dequantize(detail: dict[str, Any], values: np.ndarray) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return values
    scale, zero_point = detail["quantization"]
    return ((np.asarray(values).astype(np.float32) - zero_point) * scale).astype(np.float32)


def _novelty_output(interpreter: Any, outputs: list[dict[str, Any]]
                    ) -> Optional[dict[str, Any]]:
    """The output the signature names `novelty` (retrain's exports with a novelty score)."""
    signatures = interpreter.get_signature_list()
    if len(outputs) < 2 or not signatures:
        return None
    runner = interpreter.get_signature_runner(next(iter(signatures)))
    index = runner.get_output_details().get(NOVELTY_OUTPUT, {}).get("index")
    return next((detail for detail in outputs if detail["index"] == index), None)


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
