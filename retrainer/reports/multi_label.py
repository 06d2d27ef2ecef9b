"""Multi-label metrics from 0/1 targets, probabilities and per-class thresholds (pure numpy).

Micro-F1 pools every (image, label) decision; macro-F1 and mean average precision average the
labels where they are defined; exact match is the share of images whose predicted label set is
exactly the true one. Undefined ratios (a label never predicted has no precision, a label absent
from the split no recall or AP) are None, as in `reports.metrics`, so the JSON says `null`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from retrainer.reports.metrics import class_ratios, ratio


@dataclasses.dataclass(frozen=True)
class LabelMetrics:
    """One label's row (ratios in [0, 1], None when undefined)."""

    precision: Optional[float]
    recall: Optional[float]
    f1: Optional[float]
    average_precision: Optional[float]
    support: int


@dataclasses.dataclass(frozen=True)
class MultiLabelMetrics:
    """Metrics of one split's multi-label predictions.

    Attributes:
        count: N, the images measured.
        micro_f1, macro_f1, mean_average_precision, exact_match: None when undefined (N == 0,
            or no label has examples or predictions).
        thresholds: float32 [C], a label is predicted when its probability is >= its threshold.
        per_class: one LabelMetrics per label index.
    """

    count: int
    micro_f1: Optional[float]
    macro_f1: Optional[float]
    mean_average_precision: Optional[float]
    exact_match: Optional[float]
    thresholds: np.ndarray
    per_class: tuple[LabelMetrics, ...]

    def to_json(self, labels: tuple[str, ...]) -> dict[str, Any]:
        """The `"multi_label"` document: headline figures, thresholds and per-class rows."""
        return {
            "count": self.count,
            "micro_f1": self.micro_f1,
            "macro_f1": self.macro_f1,
            "mean_average_precision": self.mean_average_precision,
            "exact_match": self.exact_match,
            "thresholds": {label: float(value) for label, value in zip(labels, self.thresholds)},
            "per_class": {label: dataclasses.asdict(row)
                          for label, row in zip(labels, self.per_class)},
        }


def multi_label_metrics(targets: np.ndarray, probabilities: np.ndarray,
                        thresholds: np.ndarray) -> MultiLabelMetrics:
    """Every multi-label metric of one split.

    Args:
        targets: [N, C] 0/1 (any numeric or bool dtype): which labels each image has.
        probabilities: float [N, C] per-label probabilities.
        thresholds: float [C]; label c is predicted when probability >= thresholds[c].

    Returns:
        MultiLabelMetrics.
    """
    truth = np.asarray(targets) > 0.5
    scores = np.asarray(probabilities, np.float64)
    thresholds = np.asarray(thresholds, np.float32)
    predicted = scores >= thresholds
    true_positives = (truth & predicted).sum(axis=0)
    support = truth.sum(axis=0)
    predicted_count = predicted.sum(axis=0)
    per_class = tuple(
        LabelMetrics(row.precision, row.recall, row.f1,
                     average_precision=average_precision(truth[:, c], scores[:, c]),
                     support=int(support[c]))
        for c, row in enumerate(class_ratios(true_positives, support, predicted_count)))
    count = int(truth.shape[0])
    return MultiLabelMetrics(
        count=count,
        micro_f1=ratio(2 * true_positives.sum(), support.sum() + predicted_count.sum()),
        macro_f1=_mean([row.f1 for row in per_class]),
        mean_average_precision=_mean([row.average_precision for row in per_class]),
        exact_match=float((truth == predicted).all(axis=1).mean()) if count else None,
        thresholds=thresholds,
        per_class=per_class,
    )


def average_precision(truth: np.ndarray, scores: np.ndarray) -> Optional[float]:
    """Area under the precision-recall curve as the mean of the precisions at each positive.

    Tied scores count as one step (all of them are ranked together), so the value does not depend
    on the order of equal scores. None when `truth` has no positive.

    Args:
        truth: bool [N].
        scores: float [N], higher = more likely positive.
    """
    positives = int(np.count_nonzero(truth))
    if positives == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_truth = scores[order], truth[order]
    hits = np.cumsum(sorted_truth)
    # The last index of each run of tied scores: where the curve takes a step.
    ends = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])
    precision = hits[ends] / (ends + 1)
    recall_steps = np.diff(np.r_[0, hits[ends]]) / positives
    return float(np.sum(precision * recall_steps))


def _mean(values: list[Optional[float]]) -> Optional[float]:
    defined = [value for value in values if value is not None]
    return float(np.mean(defined)) if defined else None
