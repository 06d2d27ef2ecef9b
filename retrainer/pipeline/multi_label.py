"""A multi-label run's evaluation: thresholds chosen on validation, metrics on test and validation,
and the result's single-label views (top-1 metrics, the wrong label sets).

Thresholds come from the whole validation split's probabilities (training/thresholds.py); the
test split is measured with them afterwards and never takes part in choosing them. A multi-label
run keeps the document's `metrics` blocks (a top-1 prediction counts as right when
it is one of the image's labels) and its `misclassified` list (test images whose predicted label
set differs from the true one, labels joined by ";"), beside the `multi_label` figures.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np

from retrainer.data.split import TESTING, VALIDATION
from retrainer.pipeline.split_features import SplitFeatures
from retrainer.reports.metrics import SplitMetrics, split_metrics
from retrainer.reports.multi_label import MultiLabelMetrics, multi_label_metrics
from retrainer.result import MisclassifiedImage
from retrainer.training.evaluate import Evaluation
from retrainer.training.multi_label import targets_of
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


def top1_metrics(evaluation: Evaluation, validation_probabilities: np.ndarray,
                 splits: SplitFeatures) -> tuple[SplitMetrics, SplitMetrics]:
    """(test, validation) metrics where each image's truth is its best-scored true label."""
    count = len(splits.labels)
    test_images = [splits.images[TESTING][row] for row in evaluation.positions]
    test = split_metrics(_best_true_label(targets_of(test_images, count),
                                          evaluation.probabilities),
                         evaluation.probabilities, evaluation.positions)
    validation = split_metrics(
        _best_true_label(targets_of(splits.images[VALIDATION], count), validation_probabilities),
        validation_probabilities)
    return test, validation


def wrong_label_sets(evaluation: Evaluation, multi_label: MultiLabelEvaluation,
                     splits: SplitFeatures) -> tuple[MisclassifiedImage, ...]:
    """The test images whose predicted label set is not their true one, in test order."""
    labels = splits.labels
    images = [splits.images[TESTING][row] for row in evaluation.positions]
    truth = targets_of(images, len(labels)) > 0.5
    predicted = evaluation.probabilities >= multi_label.thresholds
    return tuple(
        MisclassifiedImage(
            relpath=image.relpath, path=image.path,
            true_label=";".join(labels[c] for c in np.flatnonzero(truth[row])),
            predicted_label=";".join(labels[c] for c in np.flatnonzero(predicted[row])),
            score=float(evaluation.probabilities[row].max()),
        )
        for row, image in enumerate(images) if not np.array_equal(predicted[row], truth[row])
    )


def label_hits(evaluation: Evaluation, multi_label: MultiLabelEvaluation,
               splits: SplitFeatures) -> tuple[tuple[int, int], ...]:
    """Per label, (test images with it that got it at its threshold, test images with it)."""
    images = [splits.images[TESTING][row] for row in evaluation.positions]
    truth = targets_of(images, len(splits.labels)) > 0.5
    predicted = evaluation.probabilities >= multi_label.thresholds
    return tuple((int((truth[:, c] & predicted[:, c]).sum()), int(truth[:, c].sum()))
                 for c in range(len(splits.labels)))


def _best_true_label(targets: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """int64 [N]: each image's true label with the highest probability."""
    if not len(targets):
        return np.zeros(0, np.int64)
    return np.argmax(np.where(targets > 0.5, probabilities, -1.0), axis=1).astype(np.int64)
