"""Audit detector: likely mislabeled images, by confident learning on out-of-fold probabilities.

Each image's class probabilities come from a softmax regression that never saw it (k folds,
trained on the cached vectors reduced to their top principal components, by the head's own
convex solver at a fixed penalty). Confident learning (Northcutt et al. 2021, as cleanlab's
`find_label_issues`): class j's threshold is the mean
probability of j over images labelled j; an image is confidently of class j when p_j reaches
that threshold (the largest such p_j wins). Images confidently of another class than their label
are issues; `MIN_MARGIN` keeps only those the model prefers clearly (measured: docs/audit.md).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from retrainer.audit.neighbours import principal_components
from retrainer.training.convex import ConvexConfig, fit_head

FOLDS = 5
DIMENSIONS = 64
L2_PENALTY = 5e-3  # l2 * |weights|^2 per example, on standardised features
MAX_ITERATIONS = 100
MIN_MARGIN = 0.8  # p(suggested) - p(given) of a reported issue


@dataclasses.dataclass(frozen=True)
class LabelIssue:
    """An image whose label the out-of-fold model confidently disputes."""

    position: int
    suggested: int  # class index
    score: float  # 1 - out-of-fold probability of the given label; higher = more likely wrong


def out_of_fold_probabilities(
    vectors: np.ndarray, labels: np.ndarray, num_classes: int, seed: int = 0
) -> np.ndarray:
    """Each row's class probabilities from a softmax regression trained without that row.

    Args:
        vectors: float32 [N, D] bottleneck vectors.
        labels: int64 [N] class indices.
        num_classes: C.
        seed: fold assignment seed.

    Returns:
        float64 [N, C]; each row sums to 1.
    """
    if len(labels) == 0:
        return np.zeros((0, num_classes))
    features = principal_components(vectors, DIMENSIONS).astype(np.float32)
    folds = _stratified_folds(labels, FOLDS, seed)
    probabilities = np.full((len(labels), num_classes), 1.0 / num_classes)
    # The head's own solver at one fixed penalty (no validation: nothing is chosen here).
    config = ConvexConfig(l2_path=(L2_PENALTY,), max_iterations=MAX_ITERATIONS)
    for fold in range(FOLDS):
        held_out = folds == fold
        if not held_out.any() or held_out.all():
            continue
        fit = fit_head(features[~held_out], labels[~held_out], features[:0], labels[:0],
                       num_classes, config)
        probabilities[held_out] = _softmax(features[held_out] @ fit.weights + fit.biases)
    return probabilities


def find_label_issues(probabilities: np.ndarray, labels: np.ndarray) -> list[LabelIssue]:
    """Confident learning's off-diagonal examples, most likely wrong first.

    Args:
        probabilities: float [N, C] out-of-fold probabilities.
        labels: int64 [N] given class indices.

    Returns:
        LabelIssue list sorted by score, descending.
    """
    num_classes = probabilities.shape[1]
    thresholds = np.array([
        probabilities[labels == index, index].mean() if (labels == index).any() else np.inf
        for index in range(num_classes)
    ])
    confident = np.where(probabilities >= thresholds, probabilities, -1.0)
    suggested = confident.argmax(axis=1)
    has_confident = confident.max(axis=1) >= 0
    given = probabilities[np.arange(len(labels)), labels]
    margin = probabilities[np.arange(len(labels)), suggested] - given
    disputed = has_confident & (suggested != labels) & (margin >= MIN_MARGIN)
    issues = [LabelIssue(int(position), int(suggested[position]), float(1.0 - given[position]))
              for position in np.flatnonzero(disputed)]
    return sorted(issues, key=lambda issue: (-issue.score, issue.position))


def _stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """int [N] fold of each row: each class dealt round-robin over the folds, in seeded order."""
    rng = np.random.default_rng(seed)
    assignment = np.zeros(len(labels), np.int64)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        assignment[members] = np.arange(len(members)) % folds
    return assignment


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
