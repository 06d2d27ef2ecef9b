"""Evaluation stage: the trained head's accuracy on the held-out test split.

retrain.py's "Final test accuracy = x% (N=n)", measured on the whole test set by default
(test_batch_size -1) or on a seeded class-balanced sample, plus what the CLI needs to report:
per-class counts and the misclassified images. An empty test split gives no accuracy, not a crash.
`validation_probabilities` scores the whole validation split once (its honest final figures).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional, Sequence

import numpy as np
import tensorflow as tf

from retrainer.training._sampling import TEST_STREAM, BalancedSampler, stream_seed
from retrainer.training.fine_tune import image_features
from retrainer.training.head import FeatureSet, Head

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Test results.

    Attributes:
        accuracy: fraction correct in [0, 1], or None when there was nothing to test.
        count: N, the number of predictions made (a sample may repeat an image).
        positions: int64 [N] indices into the test split of the examples predicted.
        predictions: int64 [N] predicted class of each.
        probabilities: float32 [N, C] softmax probabilities of each.
        per_class: (correct, total) per class index, over the N predictions.
    """

    accuracy: Optional[float]
    count: int
    positions: np.ndarray
    predictions: np.ndarray
    probabilities: np.ndarray
    per_class: tuple[tuple[int, int], ...]

    def misclassified(self, labels: np.ndarray) -> list[tuple[int, int]]:
        """(test-split index, predicted class) of each wrong prediction, given true `labels`."""
        wrong = self.predictions != labels[self.positions]
        return list(zip(self.positions[wrong].tolist(), self.predictions[wrong].tolist()))


def evaluate_head(
    head: Head, test: FeatureSet, num_classes: int, batch_size: int, seed: int
) -> Evaluation:
    """Measure the head on the test split.

    Args:
        head: the trained softmax layer.
        test: test features float32 [N, D] and labels int64 [N]; may be empty.
        num_classes: C.
        batch_size: -1 for every test example once, else a seeded class-balanced sample size.
        seed: the run's seed (the sample uses its own stream of it).

    Returns:
        Evaluation; accuracy None (and a warning) when `test` is empty.
    """
    if len(test) == 0:
        log.warning("No test images: skipping the final test accuracy.")
        empty = np.zeros(0, np.int64)
        return Evaluation(None, 0, empty, empty, np.zeros((0, num_classes), np.float32),
                          tuple((0, 0) for _ in range(num_classes)))
    sampler = BalancedSampler(test.labels, batch_size)
    positions = sampler.sample(stream_seed(seed, TEST_STREAM), tf.constant(0, tf.int64)).numpy()
    probabilities = predict_probabilities(head, test.features[positions])
    predictions = np.argmax(probabilities, axis=1).astype(np.int64)
    truth = test.labels[positions]
    # multi-label: the top-1 label is right when it is one of the image's labels
    correct = (predictions == truth if test.targets is None
               else test.targets[positions, predictions] > 0.5)
    per_class = tuple(
        (int(correct[truth == index].sum()), int((truth == index).sum()))
        for index in range(num_classes)
    )
    accuracy = float(correct.mean())
    log.info("Final test accuracy = %.1f%% (N=%d%s)", accuracy * 100, len(positions),
             "" if test.targets is None else "; top-1 is one of the image's labels")
    return Evaluation(accuracy, len(positions), positions, predictions, probabilities, per_class)


def predict_probabilities(head: Head, features: np.ndarray) -> np.ndarray:
    """float32 [N, D] bottleneck vectors -> float32 [N, C] softmax probabilities (N may be 0)."""
    return head.probabilities(tf.constant(features, tf.float32)).numpy()


def validation_probabilities(head: Head, validation: FeatureSet, images: Sequence[Any],
                             extractor: Any, fine_tuning: Optional[Any]) -> np.ndarray:
    """float32 [N, C] probabilities of every validation image, each once.

    Args:
        head: the trained softmax layer.
        validation: the cached validation vectors and labels.
        images: the validation ImageFiles (with `.path`), aligned with `validation`.
        extractor: the feature extractor (tuned in place by --do_fine_tuning).
        fine_tuning: the fine-tuning result, None without it. After fine-tuning the cached vectors
            are stale, so the images are run through the tuned extractor again.
    """
    features = validation.features
    if fine_tuning is not None and len(validation):
        features = image_features([image.path for image in images], extractor)
    return predict_probabilities(head, features)
