"""Class activation maps without TensorFlow, for the graphs retrainer exports of an unmodified
extractor: its last [h, w, K] map, run by LiteRT, and the head's weights float32 [K, C]
(`retrainer.explain.cam` explains why CAM is Grad-CAM's map for such a head).

The map comes from the model whose vectors the head was trained on where that is a `.tflite`:
the int8 engine's kept model, its output moved from the pooled vector to the map before the
pooling (`formats.tflite.pooled_map_model`; raw uint8 pixels in, a quarter of float32's work).
Otherwise from a float32 .tflite of the extractor's layers up to that map, converted once per
machine from the first frozen graph TensorFlow explains
(`retrainer.explain.cam.ClassActivationMaps.feature_map_model`) and kept in the user's cache,
keyed by the extractor's id, the input size, retrainer's code and TensorFlow's version; it is
read back only when its seal (`cache.memo.Memo.write_sealed`: kind and SHA-256) matches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from retrainer.cache.layout import feature_map_model_path
from retrainer.cache.memo import Memo, memo_key
from retrainer.engines.int8 import kept_map_model
from retrainer.explain.heatmap import normalized
from retrainer.formats.tflite import BatchInterpreter
from retrainer.io.host import tensorflow_version, usable_cpus, user_cache_dir

_KIND = "feature map model v2"  # how the model is sealed in the user's cache
_BATCH = 16


class LiteCam:
    """CAM of a linear head over an unmodified extractor, through its kept map model."""

    def __init__(self, extractor_id: str, input_size: tuple[int, int], weights: np.ndarray,
                 engine_model: Optional[Path] = None) -> None:
        """`weights`: the head's float32 [K, C] (K: the map's channels = the vector size).
        `engine_model`: the int8 engine's kept `.tflite` that made the head's vectors, whose
        map is then used; None: the float32 map model."""
        self.weights = np.asarray(weights, np.float32)
        self._engine_model = engine_model
        self._memo = Memo(user_cache_dir(), feature_map_model_path)
        self._key = memo_key("feature map model", tensorflow_version(), extractor_id,
                             tuple(input_size))

    @property
    def source(self) -> str:
        """Which model the maps come from ("int8 engine" or "float32 map model")."""
        return "int8 engine" if self._engine_model is not None else "float32 map model"

    def kept(self) -> bool:
        """Whether a map model is kept (not yet read: it may still prove damaged)."""
        if self._engine_model is not None:
            return self._engine_model.is_file()
        return self._memo.holds(self._key)

    def model(self) -> Optional[bytes]:
        """The map model's .tflite bytes, or None (absent or damaged)."""
        if self._engine_model is not None:
            return kept_map_model(self._engine_model)
        sealed = self._memo.read_sealed(self._key, _KIND)
        return None if sealed is None else sealed[1]

    def remember(self, model: bytes) -> None:
        """Keep the map model (.tflite bytes) for the next runs."""
        self._memo.write_sealed(self._key, _KIND, {}, model)

    def maps(self, pixels: Sequence[np.ndarray], classes: np.ndarray
             ) -> Optional[list[np.ndarray]]:
        """float32 [h, w] maps in [0, 1], one per image: the CAM of `classes` (int [N], each
        >= 0) over `pixels` (uint8 [H, W, 3] each), scaled as Grad-CAM's are; None without a
        kept map model (or one the runtime cannot load)."""
        model = self.model()
        if model is None:
            return None
        try:
            interpreter = BatchInterpreter(model, usable_cpus())
        except (ValueError, RuntimeError):
            return None
        heat: list[np.ndarray] = []
        for start in range(0, len(pixels), _BATCH):
            images = np.stack(pixels[start:start + _BATCH])
            if interpreter.input_dtype != np.uint8:  # the int8 model takes raw pixels
                images = images.astype(np.float32) / 255.0
            feature_map = interpreter(images)
            chosen = self.weights[:, classes[start:start + _BATCH]]
            heat += [normalized(raw) for raw in np.einsum("nhwk,kn->nhw", feature_map, chosen)]
        return heat
