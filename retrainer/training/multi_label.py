"""Multi-label evaluation: 0/1 targets from a run's images, thresholds, test and validation metrics.

Thresholds come from the whole validation split's probabilities (training/thresholds.py); the
test split is measured with them afterwards and never takes part in choosing them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np

from retrainer.reports.multi_label import MultiLabelMetrics, multi_label_metrics
from retrainer.training.thresholds import choose_thresholds


@dataclasses.dataclass(frozen=True)
class MultiLabelEvaluation:
    """A multi-label head's thresholds and its metrics on the test and validation splits."""

    thresholds: np.ndarray
    test: MultiLabelMetrics
    validation: MultiLabelMetrics

    def to_json(self, labels: tuple[str, ...]) -> dict[str, Any]:
        """The `"multi_label"` document: the test figures, and the validation ones under
        "validation"."""
        return {**self.test.to_json(labels), "validation": self.validation.to_json(labels)}


def targets_of(images: Sequence[Any], num_classes: int) -> np.ndarray:
    """float32 [N, C]: 1 where image n has label c (from each ImageFile's `label_indices`)."""
    targets = np.zeros((len(images), num_classes), np.float32)
    for row, image in enumerate(images):
        targets[row, list(image.label_indices)] = 1.0
    return targets


def evaluate_multi_label(labels: tuple[str, ...], test_images: Sequence[Any],
                         test_positions: np.ndarray, test_probabilities: np.ndarray,
                         validation_images: Sequence[Any], validation_probabilities: np.ndarray,
                         fixed_threshold: Optional[float] = None) -> MultiLabelEvaluation:
    """Choose the thresholds on validation, then measure both splits.

    Args:
        labels: the label names (C).
        test_images: the test split's ImageFiles; `test_positions` int [N] picks the rows
            `test_probabilities` float [N, C] were computed for.
        validation_images: the validation split's ImageFiles, aligned with
            `validation_probabilities` float [V, C].
        fixed_threshold: --multi_label_threshold (None: per label, best F1 on validation).
    """
    validation_targets = targets_of(validation_images, len(labels))
    thresholds = choose_thresholds(validation_targets, validation_probabilities, fixed_threshold,
                                   labels)
    test_targets = targets_of(test_images, len(labels))[np.asarray(test_positions, np.int64)]
    return MultiLabelEvaluation(
        thresholds=thresholds,
        test=multi_label_metrics(test_targets, test_probabilities, thresholds),
        validation=multi_label_metrics(validation_targets, validation_probabilities, thresholds),
    )
