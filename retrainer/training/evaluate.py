"""Evaluation stage: the trained head's accuracy on the held-out test split.

retrain.py's "Final test accuracy = x% (N=n)", measured on the whole test set by default
(test_batch_size -1) or on a seeded class-balanced sample, plus what the CLI needs to report:
per-class counts and the misclassified images. An empty test split gives no accuracy, not a crash.
`predict_probabilities` scores any split (the validation split's honest final figures). numpy,
a chunk of rows at a time: no TensorFlow (only a sampled test batch draws with the training's
TensorFlow sampler), and no more than a chunk's [rows, C] logits besides the probabilities.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Optional

import numpy as np

from retrainer.training.options import WHOLE_SET
from retrainer.training.solver import chunk_rows

if TYPE_CHECKING:
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
    sample = _test_sample(test.labels, batch_size, seed)
    positions = np.arange(len(test), dtype=np.int64) if sample is None else sample
    probabilities = predict_probabilities(head, test.features, sample)
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


def predict_probabilities(head: Head, features: np.ndarray,
                          rows: Optional[np.ndarray] = None) -> np.ndarray:
    """float32 [N, D] bottleneck vectors -> float32 [N, C] probabilities (N may be 0), computed
    a chunk of rows at a time.

    Args:
        head: the trained layer.
        features: float32 [N, D].
        rows: int [M] rows of `features` to score (then [M, C]); None: every row.
    """
    weights = np.asarray(head.weights, np.float32)
    biases = np.asarray(head.biases, np.float32)
    count = len(features) if rows is None else len(rows)
    probabilities = np.empty((count, weights.shape[1]), np.float32)
    step = chunk_rows(weights.shape[1], weights[:, 0].nbytes)
    for start in range(0, count, step):
        chosen = slice(start, start + step) if rows is None else rows[start:start + step]
        logits = np.asarray(features[chosen], np.float32) @ weights
        logits += biases
        probabilities[start:start + step] = head.objective.probabilities(logits)
    return probabilities


def _test_sample(labels: np.ndarray, batch_size: int, seed: int) -> Optional[np.ndarray]:
    """int64 positions of a seeded class-balanced sample of the test rows, or None: every row
    once (WHOLE_SET)."""
    if batch_size == WHOLE_SET:
        return None
    from retrainer.training._sampling import TEST_STREAM, BalancedSampler, stream_seed

    return BalancedSampler(labels, batch_size).sample(stream_seed(seed, TEST_STREAM), 0).numpy()
