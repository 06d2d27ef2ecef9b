"""Evaluation stage: the trained head's accuracy on the held-out test split.

retrain.py's "Final test accuracy = x% (N=n)", measured on the whole test set by default
(test_batch_size -1) or on a seeded class-balanced sample, plus what the CLI needs to report:
per-class counts and the misclassified images. An empty test split gives no accuracy, not a crash.
numpy (`Head.probabilities`, a chunk of rows at a time): no TensorFlow, except that a sampled
test batch draws with the training's TensorFlow sampler.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import numpy as np

from retrainer.training.head_types import FeatureSet, Head
from retrainer.training.options import WHOLE_SET

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
    sample = _test_sample(test.labels, batch_size, seed)
    positions = np.arange(len(test), dtype=np.int64) if sample is None else sample
    probabilities = head.probabilities(test.features, sample)
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


def _test_sample(labels: np.ndarray, batch_size: int, seed: int) -> Optional[np.ndarray]:
    """int64 positions of a seeded class-balanced sample of the test rows, or None: every row
    once (WHOLE_SET)."""
    if batch_size == WHOLE_SET:
        return None
    from retrainer.training._sampling import TEST_STREAM, BalancedSampler, stream_seed

    return BalancedSampler(labels, batch_size).sample(stream_seed(seed, TEST_STREAM), 0).numpy()
