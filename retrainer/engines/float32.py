"""float32 engine: the extractor traced once into a tf.function (today's computation, unchanged)."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from retrainer.engines.base import FLOAT32, Engine
from retrainer.engines.multi_device import default_device, sharded_feature_function
from retrainer.extractors import FeatureExtractor

BATCH_SIZE = 32


def feature_function(extractor: FeatureExtractor) -> Any:
    """The extractor as one traced function from uint8 pixels.

    Returns:
        fn(uint8 [N, H, W, 3]) -> float32 [N, D]; pixels scaled to [0, 1] as the exported graph's
        `Placeholder` expects them.
    """
    height, width = extractor.spec.input_size

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8)])
    def features(images: tf.Tensor) -> tf.Tensor:
        return extractor(tf.cast(images, tf.float32) / 255.0)

    return features


def placed_feature_function(extractor: FeatureExtractor, devices: tuple[str, ...]
                            ) -> tuple[Any, tuple[str, ...], int]:
    """`feature_function`, or with `devices` its batches split across them (`multi_device`).

    Returns:
        (the function, the devices it runs on, the batch size that gives each device 32 images).
    """
    if not devices:
        return feature_function(extractor), (default_device(),), BATCH_SIZE
    return sharded_feature_function(extractor, devices), devices, BATCH_SIZE * len(devices)


class Float32Engine(Engine):
    """TensorFlow, float32 throughout; vectors are exactly the exported graph's.

    Args:
        devices: TensorFlow devices to split each batch over; () for TensorFlow's default.
    """

    precision = FLOAT32

    def __init__(self, extractor: FeatureExtractor, devices: tuple[str, ...] = ()) -> None:
        self.spec = extractor.spec
        self._features, self.devices, self.batch_size = placed_feature_function(extractor, devices)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self._features(pixels).numpy()
