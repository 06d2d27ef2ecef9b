"""The result's single-label views of a multi-label run: top-1 metrics and the wrong label sets.

A multi-label run keeps the document's `metrics` blocks (a top-1 prediction counts as right when
it is one of the image's labels) and its `misclassified` list (test images whose predicted label
set differs from the true one, labels joined by ";"), beside the `multi_label` figures.
"""

from __future__ import annotations

import numpy as np

from retrainer.data.split import TESTING, VALIDATION
from retrainer.pipeline.split_features import SplitFeatures
from retrainer.reports.metrics import SplitMetrics, split_metrics
from retrainer.result import MisclassifiedImage
from retrainer.training.evaluate import Evaluation
from retrainer.training.multi_label import MultiLabelEvaluation, targets_of


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


def _best_true_label(targets: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """int64 [N]: each image's true label with the highest probability."""
    if not len(targets):
        return np.zeros(0, np.int64)
    return np.argmax(np.where(targets > 0.5, probabilities, -1.0), axis=1).astype(np.int64)
