"""bfloat16 engine: TensorFlow with oneDNN's automatic mixed precision, scoped to this engine.

Grappler's `auto_mixed_precision_onednn_bfloat16` rewrite casts convolutions and matrix products to
bfloat16 (accumulating in float32) when a function is instantiated. The option is process-global,
but TensorFlow reads it on every call and instantiates a function once per distinct setting (checked
by tests/test_engines.py: a float32 function called after this engine gives float32 vectors). So the
engine switches it on only around its own calls and restores the previous setting: other functions
in the process, called between the engine's calls, run in float32. Not thread-safe against another
thread instantiating a function during a call; the pipeline calls engines from one thread.

Fast only on CPUs with native bfloat16 (AVX512-BF16 or AMX); see `retrainer.engines.cpu`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import tensorflow as tf

from retrainer.engines.base import BFLOAT16, Engine, precision_spec
from retrainer.engines.cpu import runs_bfloat16
from retrainer.engines.float32 import placed_feature_function
from retrainer.errors import UsageError
from retrainer.extractors import FeatureExtractor

_OPTION = "auto_mixed_precision_onednn_bfloat16"


@contextlib.contextmanager
def onednn_bfloat16() -> Iterator[None]:
    """Functions called inside instantiate with the bfloat16 rewrite; the setting is restored."""
    before = tf.config.optimizer.get_experimental_options().get(_OPTION, False)
    tf.config.optimizer.set_experimental_options({_OPTION: True})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({_OPTION: before})


class BFloat16Engine(Engine):
    """The float32 engine's function (on `devices`, as there), run under the oneDNN rewrite.

    Raises:
        UsageError: it would run on a CPU where TensorFlow skips the rewrite (exit 2).
    """

    precision = BFLOAT16

    def __init__(self, extractor: FeatureExtractor, devices: tuple[str, ...] = ()) -> None:
        self.spec = precision_spec(extractor.spec, BFLOAT16)
        self._features, self.devices, self.batch_size = placed_feature_function(extractor, devices)
        if all("CPU" in device for device in self.devices) and not runs_bfloat16():
            raise UsageError("--extractor_precision bfloat16 needs a CPU with AVX-512 (this one "
                             "has none, so TensorFlow would compute float32 vectors); use "
                             "--extractor_precision auto, int8 or float32.")

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        with onednn_bfloat16():
            return self._features(pixels).numpy()
