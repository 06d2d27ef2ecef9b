"""A frozen GraphDef (.pb) for `label-image`: parsed and loaded into one TF1 Session once per run.

Measured against `wrap_function` + `prune`: same steady-state speed, but load + first batch took
0.4 s instead of 0.7-1.5 s on a MobileNetV2-size graph. Op names, input size and labels come from
flags, else the export's `<graph>.meta.json`, else the graph itself.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from retrainer.classify.config import (
    DEFAULT_OUTPUT_LAYER,
    ClassifyConfig,
    ModelSpec,
    first_set,
    flag_or,
    resolve_labels,
    retrainer_extras,
)
from retrainer.errors import ModelError, UsageError
from retrainer.formats.frozen_graph import load_frozen_graph, read_graph_file
from retrainer.formats.graph_contract import (
    GRAPH_FORMAT,
    INPUT_MEAN,
    INPUT_OP,
    INPUT_STD,
    METADATA_SUFFIX,
    graph_sha256,
    metadata_path,
)
from retrainer.io.storage import AnyPath


class FrozenGraphModel:
    """A frozen graph in a Session: `outputs(pixels)` for uint8 images."""

    kind = "graph"

    def __init__(self, config: ClassifyConfig) -> None:
        data = read_graph_file(config.graph)
        sidecar = read_sidecar(config.graph, graph_sha256(data))
        frozen = load_frozen_graph(
            config.graph,
            data,
            config.input_layer or sidecar.get("input_layer") or INPUT_OP,
            config.output_layer or sidecar.get("output_layer") or DEFAULT_OUTPUT_LAYER,
        )
        self._input, self._output = frozen.input, frozen.output
        labels, self.labels_source = resolve_labels(
            config, sidecar.get("labels"), f"metadata {config.graph}{METADATA_SUFFIX}", "graph",
            f"no {METADATA_SUFFIX} sidecar")
        thresholds, novelty_threshold = retrainer_extras(
            sidecar, labels, f"metadata {config.graph}{METADATA_SUFFIX}")
        self._fetches = [self._output]
        if novelty_threshold is not None:
            name = str(sidecar["novelty"].get("output_layer", "novelty"))
            try:
                self._fetches.append(frozen.graph.get_tensor_by_name(f"{name}:0"))
            except (KeyError, ValueError):
                raise ModelError(f"graph {config.graph} has no {name!r} op, but its metadata "
                                 "describes a novelty output; export it again") from None
        self.spec = ModelSpec(
            input_layer=self._input.op.name,
            output_layer=self._output.op.name,
            input_size=_input_size(config, sidecar, self._input),
            input_mean=flag_or(INPUT_MEAN, config.input_mean, sidecar.get("input_mean")),
            input_std=flag_or(INPUT_STD, config.input_std, sidecar.get("input_std")),
            labels=labels,
            thresholds=thresholds,
            novelty_threshold=novelty_threshold,
        )
        self.classes = self._output.shape[-1]
        self._session = tf.compat.v1.Session(graph=frozen.graph)

    def outputs(self, pixels: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """uint8 [N, H, W, 3] RGB -> (float32 [N, C] scores, float32 [N] novelty or None)."""
        feed = (pixels.astype(np.float32) - self.spec.input_mean) / self.spec.input_std
        values = self._session.run(self._fetches, {self._input: feed})
        return values[0], (values[1] if len(values) > 1 else None)

    def close(self) -> None:
        self._session.close()


def read_sidecar(graph: AnyPath, graph_sha256: str) -> dict[str, Any]:
    """The export's `<graph>.meta.json` as a dict, or {} when there is none.

    Args:
        graph: the .pb file.
        graph_sha256: hex SHA-256 of the graph's bytes, checked against the sidecar's.

    Raises:
        ModelError: the sidecar exists but is not valid JSON or not a format this version reads, or
            it belongs to another version of the graph (its "graph_sha256" differs).
    """
    path = metadata_path(graph)
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(
            f"cannot read metadata {path}: {error}; fix or delete it (flags can replace it)"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != GRAPH_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ModelError(
            f"metadata {path} has format {found!r}, expected {GRAPH_FORMAT!r}; "
            "delete it and pass --input_layer, --output_layer and --labels instead"
        )
    expected = meta.get("graph_sha256")
    if expected is not None and expected != graph_sha256:
        raise ModelError(
            f"metadata {path} describes another version of {graph} (an interrupted export, or a "
            "graph copied without its metadata), so its labels may not match; rerun retrain, or "
            "copy the graph together with its metadata"
        )
    return meta


def _input_size(config: ClassifyConfig, sidecar: dict[str, Any], tensor: "tf.Tensor") -> tuple[int, int]:
    """Flags, else sidecar, else the graph's static input shape; flags must agree with the graph."""
    graph_size = tuple(tensor.shape)[1:3] if tensor.shape.rank == 4 else (None, None)
    size = []
    flags = (config.input_height, config.input_width)
    for axis, flag, graph_value in zip(("height", "width"), flags, graph_size):
        value = first_set(flag, sidecar.get(f"input_{axis}"), graph_value)
        if value is None:
            raise UsageError(
                f"graph {config.graph} accepts images of any {axis} and has no {METADATA_SUFFIX} "
                f"sidecar; pass --input_{axis}"
            )
        if graph_value is not None and value != graph_value:
            raise UsageError(
                f"graph {config.graph}'s input {tensor.name} takes {axis} {graph_value}, but "
                f"input_{axis} is {value}; drop --input_{axis} to use the graph's size"
            )
        size.append(int(value))
    return size[0], size[1]
