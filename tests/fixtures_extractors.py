"""A tiny, deterministic stand-in extractor for fast plumbing tests.

Registered as "tiny_test" so in-process CLI tests can pass `--tfhub_module tiny_test`. It has a real
variable (so export freezing is exercised) and its features separate images by colour and texture.
Correctness of the real models is tested separately with the built-in EfficientNet-Lite weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from retrainer.extractors import ExtractorSpec, FeatureExtractor, list_extractors, register_extractor

TINY_EXTRACTOR = "tiny_test"


class TinyExtractor(FeatureExtractor):
    def __init__(self) -> None:
        super().__init__(name="tiny_test")
        self.spec = ExtractorSpec(name=TINY_EXTRACTOR, id="tiny_test-v1", input_size=(32, 32), vector_size=16)
        kernel = np.random.default_rng(0).normal(size=(3, 3, 3, 13)).astype(np.float32) / 3
        self.kernel = tf.Variable(kernel, trainable=False, name="kernel")

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        centred = (images - 0.5) * 2.0
        texture = tf.nn.relu(tf.nn.conv2d(centred, self.kernel, strides=2, padding="SAME"))
        return tf.concat([tf.reduce_mean(images, [1, 2]), tf.reduce_mean(texture, [1, 2])], axis=-1)

    def fine_tunable_variables(self, blocks: int) -> tuple[tf.Variable, ...]:
        return (self.kernel,)


if TINY_EXTRACTOR not in list_extractors():

    @register_extractor(TINY_EXTRACTOR)
    def _tiny(image_size=None) -> TinyExtractor:
        return TinyExtractor()


@pytest.fixture
def tiny_extractor() -> TinyExtractor:
    return TinyExtractor()
