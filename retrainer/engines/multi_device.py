"""Several local devices run one extractor: each device computes its share of every batch.

One tf.function holds a replica of the extractor per device (`tf.device`), fed one contiguous
slice of the batch each, and concatenates the slices' vectors in order. TensorFlow runs the
replicas concurrently (on GPUs each device's part of the function is queued asynchronously), so
no Python threads are needed. The computation is the single-device one, so the vectors match it
to float tolerance and the engines keep the single-device cache namespace. The weights stay where
they were created; devices without them read copies each call (~18 MB for efficientnet_lite0).
"""

from __future__ import annotations

from typing import Any, Callable

import tensorflow as tf

from retrainer.engines.devices import short_name
from retrainer.errors import UsageError
from retrainer.extractors import FeatureExtractor

_HOST = "/device:CPU:0"


def local_devices() -> tuple[str, ...]:
    """TensorFlow's logical CPU and GPU devices of this process, e.g. "/device:GPU:1"."""
    return tuple(device.name for device in tf.config.list_logical_devices()
                 if device.device_type in ("CPU", "GPU"))


def resolve_devices(requested: tuple[str, ...]) -> tuple[str, ...]:
    """The devices to split batches over; () means the single-device engine, as before.

    Args:
        requested: `parse_devices` names; () for auto: every GPU when there are 2 or more.

    Raises:
        UsageError: a requested device this machine does not have (exit 2).
    """
    available = local_devices()
    if not requested:
        gpus = tuple(device for device in available if "GPU:" in device)
        return gpus if len(gpus) >= 2 else ()
    missing = [short_name(device) for device in requested if device not in available]
    if missing:
        raise UsageError(f"--extraction_devices: no device {', '.join(missing)} here; this "
                         f"machine has {', '.join(short_name(device) for device in available)}.")
    return requested


def has_gpu() -> bool:
    """Whether TensorFlow sees a GPU (then it, not the CPU, runs the single-device engine)."""
    return bool(tf.config.list_logical_devices("GPU"))


def default_device() -> str:
    """Where TensorFlow places the single-device engine's ops: the first GPU, else the CPU."""
    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else _HOST


def sharded_feature_function(extractor: FeatureExtractor, devices: tuple[str, ...]
                             ) -> Callable[[Any], tf.Tensor]:
    """`float32.feature_function` with the batch split across `devices`.

    Returns:
        fn(uint8 [N, H, W, 3]) -> float32 [N, D]; device i gets rows [N*i//k, N*(i+1)//k), so
        shares differ by at most one row. A batch smaller than k runs on the first device alone:
        some extractors' ops mis-shape an empty batch.
    """
    everywhere, first = _split_function(extractor, devices), _split_function(extractor, devices[:1])

    def features(images: Any) -> tf.Tensor:
        return (everywhere if len(images) >= len(devices) else first)(images)

    return features


def _split_function(extractor: FeatureExtractor, devices: tuple[str, ...]) -> Any:
    height, width = extractor.spec.input_size

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8)])
    def features(images: tf.Tensor) -> tf.Tensor:
        count = tf.shape(images)[0]
        vectors = []
        for index, device in enumerate(devices):
            with tf.device(_HOST):  # slice on the host: each device receives only its rows
                share = images[count * index // len(devices):count * (index + 1) // len(devices)]
            with tf.device(device):
                vectors.append(extractor(tf.cast(share, tf.float32) / 255.0))
        with tf.device(_HOST):
            return tf.concat(vectors, axis=0)

    return features
