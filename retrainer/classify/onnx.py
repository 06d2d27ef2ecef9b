"""An ONNX model for `label-image`, run by ONNX Runtime on the CPU.

Told apart from the other kinds by content (`graph_contract.looks_like_onnx`). Labels come from
--labels, else the model's `metadata_props` (retrain's export writes them), else
`output_labels.txt` beside the file; normalisation and tensor names from flags, else the metadata,
else the defaults (mean 0, std 255; the first input, the `probabilities` output or the first).
A multi-label model's thresholds and the novelty threshold come from the `multi_label` and
`novelty` metadata; the `novelty` output is then fetched in the same run.
Needs the `onnx` extra's onnxruntime (and onnx, with which `retrainer.security.check_model` reads the
file's ops and domains before ONNX Runtime loads it).
"""

from __future__ import annotations

import json
from typing import Any, Optional

import numpy as np

from retrainer.classify.config import (
    ClassifyConfig,
    ModelSpec,
    check_size_flags,
    first_set,
    flag_or,
    resolve_labels,
    retrainer_extras,
)
from retrainer.errors import ModelError
from retrainer.formats.graph_contract import (
    INPUT_MEAN,
    INPUT_STD,
    NOVELTY_OUTPUT,
    ONNX_OUTPUT,
    require_onnx_extra,
)
from retrainer.io.host import usable_cpus
from retrainer.security import check_model


class OnnxModel:
    """An ONNX model in an ONNX Runtime session: `outputs(pixels)` for uint8 images, batched."""

    kind = "ONNX model"

    def __init__(self, config: ClassifyConfig, data: bytes) -> None:
        require_onnx_extra(f"--graph {config.graph} (an ONNX model)", ("onnxruntime", "onnx"))
        check_model(config.graph, "onnx", trust=config.trust_model)  # before ONNX Runtime sees it
        self._session = _session(config, data)
        metadata = _metadata(config, self._session)
        self._input = _pick(self._session.get_inputs(),
                            first_set(config.input_layer, metadata.get("input_name")), "input",
                            config)
        self._output = _pick(self._session.get_outputs(),
                             first_set(config.output_layer, metadata.get("output_name"),
                                       ONNX_OUTPUT), "output", config)
        shape = self._input.shape
        if (len(shape) != 4 or shape[3] != 3
                or not all(isinstance(side, int) for side in shape[1:3])
                or self._input.type != "tensor(float)"):
            raise ModelError(
                f"ONNX model {config.graph}'s input {self._input.name} is {self._input.type} "
                f"{shape}, but label-image feeds float [N, height, width, 3] RGB images of a fixed "
                "size; pass --input_layer with such an input"
            )
        size = (int(shape[1]), int(shape[2]))
        check_size_flags(config, size, "ONNX model")
        labels, self.labels_source = resolve_labels(
            config, _embedded_labels(config, metadata), f"the metadata of {config.graph}",
            "ONNX model", "no labels metadata")
        extras = _json_entries(config, metadata, ("multi_label", "novelty"))
        thresholds, novelty_threshold = retrainer_extras(extras, labels,
                                                         f"the metadata of {config.graph}")
        self._novelty_name: Optional[str] = None
        if novelty_threshold is not None:
            self._novelty_name = str(extras["novelty"].get("output_layer", NOVELTY_OUTPUT))
            names = [output.name for output in self._session.get_outputs()]
            if self._novelty_name not in names:
                raise ModelError(f"ONNX model {config.graph}'s metadata describes a novelty "
                                 f"output {self._novelty_name!r}, but its outputs are "
                                 f"{', '.join(names)}; export it again")
        self.spec = ModelSpec(
            input_layer=self._input.name,
            output_layer=self._output.name,
            input_size=size,
            input_mean=flag_or(INPUT_MEAN, config.input_mean,
                               _number(metadata, "input_mean", config)),
            input_std=flag_or(INPUT_STD, config.input_std, _number(metadata, "input_std", config)),
            labels=labels,
            thresholds=thresholds,
            novelty_threshold=novelty_threshold,
        )
        width = self._output.shape[-1] if self._output.shape else None
        self.classes = width if isinstance(width, int) else None

    def outputs(self, pixels: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """uint8 [N, H, W, 3] RGB -> (float32 [N, C] scores, float32 [N] novelty or None)."""
        feed = (pixels.astype(np.float32) - self.spec.input_mean) / self.spec.input_std
        names = [self._output.name] + ([] if self._novelty_name is None else [self._novelty_name])
        values = self._session.run(names, {self._input.name: feed})
        novelty = None if len(values) < 2 else np.asarray(values[1], np.float32).reshape(-1)
        return np.asarray(values[0], np.float32), novelty

    def close(self) -> None:
        self._session = None


def _session(config: ClassifyConfig, data: bytes) -> Any:
    import onnxruntime  # the optional [onnx] extra

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = usable_cpus()
    options.log_severity_level = 3  # errors only: its warnings are about graph rewrites
    try:
        return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own exception types (InvalidProtobuf, Fail, ...)
        raise ModelError(
            f"cannot load ONNX model {config.graph}: truncated, corrupt or not runnable "
            f"({_first_line(error)}); export it again (retrain --onnx_output_file)"
        ) from None


def _metadata(config: ClassifyConfig, session: Any) -> dict[str, str]:
    try:
        return dict(session.get_modelmeta().custom_metadata_map)
    except Exception as error:  # a model ONNX Runtime runs but whose metadata it cannot read
        raise ModelError(f"ONNX model {config.graph} has unreadable metadata: "
                         f"{_first_line(error)}") from None


def _pick(values: list[Any], name: Any, role: str, config: ClassifyConfig) -> Any:
    """The input/output called `name`; else the only one / the first; else an error listing them."""
    names = [value.name for value in values]
    if name in names:
        return values[names.index(name)]
    asked = config.input_layer if role == "input" else config.output_layer
    if asked is None and values:
        return values[0]
    raise ModelError(
        f"{role} {asked!r} is not in ONNX model {config.graph}; its {role}s: "
        f"{', '.join(names) or 'none'}. Pass --{role}_layer with one of them"
    )


def _number(metadata: dict[str, str], key: str, config: ClassifyConfig) -> Any:
    if key not in metadata:
        return None
    try:
        return float(metadata[key])
    except ValueError:
        raise ModelError(f"ONNX model {config.graph}'s metadata {key}={metadata[key]!r} is not a "
                         f"number; pass --{key}") from None


def _embedded_labels(config: ClassifyConfig, metadata: dict[str, str]) -> Optional[list[str]]:
    """The `labels` metadata (a JSON list of strings), or None without it."""
    if "labels" not in metadata:
        return None
    try:
        labels = json.loads(metadata["labels"])
    except json.JSONDecodeError:
        labels = None
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise ModelError(f"ONNX model {config.graph}'s metadata labels are not a JSON list of "
                         "strings; pass --labels FILE")
    return labels


def _json_entries(config: ClassifyConfig, metadata: dict[str, str], keys: tuple[str, ...]
                  ) -> dict[str, Any]:
    """The JSON-valued metadata entries among `keys` that the model has, decoded."""
    entries = {}
    for key in keys:
        if key in metadata:
            try:
                entries[key] = json.loads(metadata[key])
            except json.JSONDecodeError:
                raise ModelError(f"ONNX model {config.graph}'s metadata {key} is not JSON; export "
                                 "it again (retrain --onnx_output_file)") from None
    return entries


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
