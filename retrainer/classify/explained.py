"""`label-image --explain`: a frozen graph or SavedModel that classifies and explains in one run.

The model is loaded as usual (flags, sidecar, labels: `frozen_graph`, `saved_model`), then its
graph gets Grad-CAM tensors (`retrainer.explain.gradcam`); the same Session run gives the
probabilities label-image prints and the heat maps. Which extractor built the model comes from the
graph's `.meta.json` sidecar or the SavedModel's `assets/metadata.json`; only float32 TensorFlow
models of the explainable extractors qualify: a .tflite or .onnx has no gradients to follow.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Optional

import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from retrainer.classify.config import ClassifyConfig
from retrainer.classify.frozen_graph import read_sidecar
from retrainer.classify.saved_model import SIGNATURE
from retrainer.data.decoding import UnreadableImageError
from retrainer.errors import ModelError, UsageError
from retrainer.explain.gradcam import Explanation, GradCam
from retrainer.explain.heatmap import HeatmapNames, image_overlay
from retrainer.explain.scope import require_explainable
from retrainer.formats.frozen_graph import load_frozen_graph, read_graph_file
from retrainer.formats.graph_contract import (
    METADATA_SUFFIX,
    NOVELTY_OUTPUT,
    SAVED_MODEL_METADATA,
    graph_sha256,
)
from retrainer.io.atomic import write_bytes_atomically
from retrainer.io.storage import AnyPath, is_url

log = logging.getLogger(__name__)
_ARTICLED = {"ONNX model": "an ONNX model", "TFLite model": "a TFLite model"}


class ExplainedModel:
    """Wraps a loaded frozen graph or SavedModel: same spec and labels, plus `explain`."""

    def __init__(self, config: ClassifyConfig, base: Any) -> None:
        """Build the explaining graph for `base` (closed here: its own session is not needed).

        Raises:
            UsageError: a .tflite/.onnx model, unknown or unexplainable extractor.
            ModelError: the graph has no pooled convolutional map.
        """
        self.kind, self.spec, self.classes = base.kind, base.spec, base.classes
        self.labels_source = base.labels_source
        base.close()
        if self.kind == "graph":
            self._gradcam = _frozen_graph_gradcam(config, self.spec)
        elif self.kind == "SavedModel":
            self._gradcam = _saved_model_gradcam(config, self.spec)
        else:
            raise UsageError(
                f"--explain needs a frozen graph (.pb) or a SavedModel, but {config.graph} is "
                f"{_ARTICLED.get(self.kind, self.kind)}, which keeps no gradients to explain with. "
                "Pass the .pb retrain wrote beside it (--output_graph), or drop --explain"
            )

    def explain(self, pixels: np.ndarray) -> Explanation:
        """uint8 [N, H, W, 3] RGB -> probabilities, top classes and heat maps."""
        feed = (pixels.astype(np.float32) - self.spec.input_mean) / self.spec.input_std
        return self._gradcam.explain(feed)

    def outputs(self, pixels: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        explanation = self.explain(pixels)
        return explanation.probabilities, explanation.novelty

    def close(self) -> None:
        self._gradcam.close()


class HeatmapWriter:
    """Writes `DIR/<image name>.png` per classified image and adds it and the peak to its result."""

    def __init__(self, folder: AnyPath) -> None:
        if not is_url(folder):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise UsageError(f"--explain {folder} is a file; pass a folder for the heat "
                                 "maps") from None
        self._names = HeatmapNames(folder)

    def write(self, result: Any, heat: np.ndarray) -> Any:
        """`result` (an ImageResult) with `heatmap` and `peak`; an image that can no longer be
        read keeps its predictions and gets no heat map (a warning says why)."""
        try:
            picture, peak = image_overlay(result.path, heat)
        except UnreadableImageError as error:
            log.warning("no heat map for %s: %s", result.path, error.reason)
            return result
        path = self._names.path_for(result.path)
        write_bytes_atomically(path, picture)
        return dataclasses.replace(result, heatmap=path, peak=peak)


def _frozen_graph_gradcam(config: ClassifyConfig, spec: Any) -> GradCam:
    data = read_graph_file(config.graph)
    sidecar = read_sidecar(config.graph, graph_sha256(data))
    if not sidecar:
        raise UsageError(
            f"--explain needs {config.graph}{METADATA_SUFFIX}, the sidecar retrain writes beside "
            "the graph, to know which extractor built it; copy it beside the graph"
        )
    require_explainable(_extractor_name(sidecar), f"graph {config.graph}")
    frozen = load_frozen_graph(config.graph, data, spec.input_layer, spec.output_layer)
    novelty = None
    if spec.novelty_threshold is not None:  # the loaded model found it, so the name resolves
        name = sidecar["novelty"].get("output_layer", NOVELTY_OUTPUT)
        novelty = frozen.graph.get_tensor_by_name(f"{name}:0")
    return GradCam(frozen.graph, frozen.input, frozen.output, f"graph {config.graph}", novelty)


def _saved_model_gradcam(config: ClassifyConfig, spec: Any) -> GradCam:
    source = f"SavedModel {config.graph}"
    metadata_file = config.graph / "assets" / SAVED_MODEL_METADATA
    try:
        metadata = json.loads(metadata_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--explain needs {metadata_file}, which says which extractor built the "
                         "model; export it again with this version (retrain --saved_model_dir)"
                         ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"cannot read {metadata_file}: {error}") from None
    require_explainable(_extractor_name(metadata), source)
    loaded = tf.saved_model.load(str(config.graph))  # alive while its variables are frozen
    signature = loaded.signatures[SIGNATURE]
    frozen = convert_variables_to_constants_v2(signature)
    # The frozen outputs come in tf.nest order, the signature's names sorted ("novelty" first).
    outputs = dict(zip(sorted(signature.structured_outputs), frozen.outputs))
    novelty = outputs.get(NOVELTY_OUTPUT)
    return GradCam.from_graph_def(frozen.graph.as_graph_def(), frozen.inputs[0].name,
                                  outputs[spec.output_layer].name, source,
                                  None if novelty is None else novelty.name)


def _extractor_name(metadata: Any) -> Any:
    extractor = metadata.get("extractor") if isinstance(metadata, dict) else None
    return extractor.get("name") if isinstance(extractor, dict) else None
