"""A SavedModel folder for `label-image`: its `serving_default` signature (float images in [0, 1]).

The float signature, not the bytes one, so label-image feeds it the very pixels it feeds every
other kind (`retrainer.data.decoding.load_image`). Labels: --labels, else the model's
`assets/labels.txt`.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from retrainer.classify.config import (
    ClassifyConfig,
    ModelSpec,
    check_size_flags,
    flag_or,
    read_labels,
    retrainer_extras,
)
from retrainer.errors import ModelError, UsageError
from retrainer.formats.graph_contract import (
    INPUT_MEAN,
    INPUT_STD,
    NOVELTY_OUTPUT,
    SAVED_MODEL_METADATA,
)

SIGNATURE = "serving_default"
LABELS_ASSET = "labels.txt"

class SavedModelModel:
    """A SavedModel's `serving_default`: `outputs(pixels)` for uint8 images."""

    kind = "SavedModel"

    def __init__(self, config: ClassifyConfig) -> None:
        path = config.graph
        try:
            self._model = tf.saved_model.load(str(path))
        except (OSError, ValueError, tf.errors.OpError) as error:
            raise ModelError(f"cannot load SavedModel {path}: {str(error).splitlines()[0]}") from None
        signature = self._model.signatures.get(SIGNATURE)
        if signature is None:
            raise ModelError(f"SavedModel {path} has no {SIGNATURE!r} signature")
        (name, spec), = signature.structured_input_signature[1].items()
        outputs = [key for key in signature.structured_outputs if key != NOVELTY_OUTPUT]
        if spec.shape.rank != 4 or None in tuple(spec.shape)[1:3]:
            raise ModelError(f"SavedModel {path}'s {SIGNATURE} does not take [N, H, W, 3] images")
        self._signature, self._input_name, self._output_name = signature, name, outputs[0]
        size = (int(spec.shape[1]), int(spec.shape[2]))
        check_size_flags(config, size, "SavedModel")
        labels_file = path / "assets" / LABELS_ASSET
        if config.labels is not None:
            labels, self.labels_source = read_labels(config.labels), f"labels file {config.labels}"
        elif labels_file.is_file():
            labels, self.labels_source = read_labels(labels_file), f"labels file {labels_file}"
        else:
            raise UsageError(f"SavedModel {path} has no assets/{LABELS_ASSET}; pass --labels FILE")
        thresholds, novelty_threshold = retrainer_extras(
            _metadata(path / "assets" / SAVED_MODEL_METADATA), labels,
            f"SavedModel {path}'s assets/{SAVED_MODEL_METADATA}")
        if NOVELTY_OUTPUT not in signature.structured_outputs:
            novelty_threshold = None
        self.spec = ModelSpec(
            input_layer=name,
            output_layer=self._output_name,
            input_size=size,
            input_mean=flag_or(INPUT_MEAN, config.input_mean),
            input_std=flag_or(INPUT_STD, config.input_std),
            labels=labels,
            thresholds=thresholds,
            novelty_threshold=novelty_threshold,
        )
        self.classes = signature.structured_outputs[self._output_name].shape[-1]

    def outputs(self, pixels: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """uint8 [N, H, W, 3] RGB -> (float32 [N, C] probabilities, float32 [N] novelty or
        None)."""
        feed = (pixels.astype(np.float32) - self.spec.input_mean) / self.spec.input_std
        values = self._signature(**{self._input_name: feed})
        novelty = values.get(NOVELTY_OUTPUT) if self.spec.novelty_threshold is not None else None
        return values[self._output_name].numpy(), None if novelty is None else novelty.numpy()

    def close(self) -> None:
        self._model = None


def _metadata(path: Any) -> Any:
    """The export's assets/metadata.json, or None (older exports have none).

    Raises:
        ModelError: it exists but is not JSON.
    """
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"cannot read {path}: {error}") from None
