"""Classification metrics from true labels and predicted probabilities (pure numpy).

Accuracy, balanced accuracy, per-class precision/recall/F1/support, the confusion matrix and top-k
accuracy over one split. Undefined ratios (a class never predicted has no precision, a class with
no examples no recall) are None, not a silent 0, so the JSON says `null` and tables say "n/a".
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import numpy as np

TOP_K = 5  # top-k accuracy is reported when there are more than TOP_K classes


@dataclasses.dataclass(frozen=True)
class ClassMetrics:
    """One class's row of the per-class table (ratios in [0, 1], None when undefined)."""

    precision: Optional[float]
    recall: Optional[float]
    f1: Optional[float]
    support: int


@dataclasses.dataclass(frozen=True)
class SplitMetrics:
    """Metrics over the predictions made on one split.

    Attributes:
        count: N, the predictions counted (the confusion matrix sums to it).
        unique_images: distinct images among them (N unless a sample repeated some).
        accuracy, balanced_accuracy: None when N == 0; balanced = mean recall over classes with
            examples.
        top_k, top_k_accuracy: k and the share whose true class is among the k most probable;
            None when there are at most TOP_K classes.
        per_class: one ClassMetrics per class index.
        confusion_matrix: int64 [C, C], rows = true class, columns = predicted, in label order.
    """

    count: int
    unique_images: int
    accuracy: Optional[float]
    balanced_accuracy: Optional[float]
    top_k: Optional[int]
    top_k_accuracy: Optional[float]
    per_class: tuple[ClassMetrics, ...]
    confusion_matrix: np.ndarray

    def most_confused(self, count: int = 3) -> list[tuple[int, int, int]]:
        """The `count` largest off-diagonal cells as (true class, predicted class, n), n > 0.

        Ties are broken by label order (true, then predicted), so the list is deterministic.
        """
        matrix = self.confusion_matrix
        cells = [(int(matrix[true, predicted]), true, predicted)
                 for true in range(len(matrix)) for predicted in range(len(matrix))
                 if true != predicted and matrix[true, predicted] > 0]
        cells.sort(key=lambda cell: (-cell[0], cell[1], cell[2]))
        return [(true, predicted, n) for n, true, predicted in cells[:count]]

    def to_json(self, labels: tuple[str, ...]) -> dict[str, Any]:
        """JSON-ready dict; per-class entries and confused pairs keyed by label."""
        return {
            "count": self.count,
            "unique_images": self.unique_images,
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "top_k": self.top_k,
            "top_k_accuracy": self.top_k_accuracy,
            "per_class": {label: dataclasses.asdict(row)
                          for label, row in zip(labels, self.per_class)},
            "confusion_matrix": self.confusion_matrix.tolist(),
            "most_confused": [{"true": labels[true], "predicted": labels[predicted], "count": n}
                              for true, predicted, n in self.most_confused()],
        }


def confusion_matrix(truth: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 [C, C] counts: rows = true class, columns = predicted class.

    Args:
        truth, predictions: int [N] class indices in [0, C).
        num_classes: C.
    """
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(truth, np.int64), np.asarray(predictions, np.int64)), 1)
    return matrix


def split_metrics(
    truth: np.ndarray, probabilities: np.ndarray, positions: Optional[np.ndarray] = None
) -> SplitMetrics:
    """Every metric of one split.

    Args:
        truth: int [N] true class indices.
        probabilities: float [N, C] predicted class probabilities (the prediction is the argmax).
        positions: int [N] which image each prediction is of, to count unique images; None when
            every prediction is of a different image.

    Returns:
        SplitMetrics (ratios None when N == 0).
    """
    truth = np.asarray(truth, np.int64)
    num_classes = probabilities.shape[1]
    count = int(truth.shape[0])
    predictions = np.argmax(probabilities, axis=1) if count else np.zeros(0, np.int64)
    matrix = confusion_matrix(truth, predictions, num_classes)
    true_positives = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    per_class = tuple(ClassMetrics(row.precision, row.recall, row.f1, support=int(examples))
                      for row, examples in zip(class_ratios(true_positives, support, predicted),
                                               support))
    recalls = [row.recall for row in per_class if row.recall is not None]
    top_k = TOP_K if num_classes > TOP_K else None
    top_k_accuracy = None
    if top_k is not None and count:
        # The true class is in the top k when fewer than k classes score strictly higher.
        true_scores = probabilities[np.arange(count), truth]
        higher = (probabilities > true_scores[:, None]).sum(axis=1)
        top_k_accuracy = float((higher < top_k).mean())
    unique = count if positions is None else int(np.unique(positions).shape[0])
    return SplitMetrics(
        count=count,
        unique_images=unique,
        accuracy=ratio(true_positives.sum(), count),
        balanced_accuracy=float(np.mean(recalls)) if recalls else None,
        top_k=top_k,
        top_k_accuracy=top_k_accuracy,
        per_class=per_class,
        confusion_matrix=matrix,
    )


class ClassRatios(NamedTuple):
    precision: Optional[float]
    recall: Optional[float]
    f1: Optional[float]


def class_ratios(true_positives: np.ndarray, support: np.ndarray,
                 predicted: np.ndarray) -> list[ClassRatios]:
    """Each class's precision, recall and F1 from its counts (single- and multi-label alike).

    F1 = 2TP / (2TP + FP + FN) = 2TP / (support + predicted): the harmonic mean of the two, and 0
    (not undefined) for a class with examples that is never predicted.
    """
    return [ClassRatios(ratio(hits, guesses), ratio(hits, examples),
                        ratio(2 * hits, examples + guesses))
            for hits, examples, guesses in zip(true_positives, support, predicted)]


def ratio(numerator: Any, denominator: Any) -> Optional[float]:
    """numerator / denominator, or None when the denominator is 0 (undefined, not 0)."""
    return float(numerator) / float(denominator) if denominator else None
