"""Audit detector: likely mislabeled images, by confident learning on out-of-fold probabilities.

Each image's class probabilities come from a softmax regression that never saw it (k folds,
trained on the cached vectors reduced to their top principal components, standardised, at a
fixed L2 penalty: the head's convex objective, here in float64 numpy, since on a few thousand
64-d rows TensorFlow's first trace (~0.5 s) and per-call overhead cost more than the fits).
Confident learning (Northcutt et al. 2021, as cleanlab's
`find_label_issues`): class j's threshold is the mean
probability of j over images labelled j; an image is confidently of class j when p_j reaches
that threshold (the largest such p_j wins). Images confidently of another class than their label
are issues; `MIN_MARGIN` keeps only those the model prefers clearly (measured: docs/audit.md).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.optimize import minimize

from retrainer.audit.neighbours import principal_components

FOLDS = 5
DIMENSIONS = 64
L2_PENALTY = 5e-3  # l2 * |weights|^2 per example, on standardised features
MAX_ITERATIONS = 100
MIN_MARGIN = 0.8  # p(suggested) - p(given) of a reported issue
TOLERANCE = 1e-5  # relative change of the loss at which a fit has converged
MIN_RELATIVE_SCALE = 0.1  # no feature scaled by less than this x the median's spread (as the head)


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
    features = principal_components(vectors, DIMENSIONS).astype(np.float64)
    folds = _stratified_folds(labels, FOLDS, seed)
    probabilities = np.full((len(labels), num_classes), 1.0 / num_classes)
    for fold in range(FOLDS):
        held_out = folds == fold
        if not held_out.any() or held_out.all():
            continue
        weights, biases = softmax_regression(features[~held_out], labels[~held_out], num_classes)
        probabilities[held_out] = _softmax(features[held_out] @ weights + biases)
    return probabilities


def softmax_regression(features: np.ndarray, labels: np.ndarray,
                       num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The layer minimising mean cross entropy + L2_PENALTY x |weights|^2 on the standardised
    features (L-BFGS-B, at most MAX_ITERATIONS steps), as weights [D, C] and biases [C] on the
    features as given.

    Args:
        features: float64 [N, D], N >= 1.
        labels: int64 [N] class indices below `num_classes`.
        num_classes: C.
    """
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    floor = MIN_RELATIVE_SCALE * np.sort(scale)[len(scale) // 2] if len(scale) else 0.0
    scale = np.where(scale > 1e-6, np.maximum(scale, floor), 1.0)
    standard = (features - mean) / scale
    targets = np.zeros((len(labels), num_classes))
    targets[np.arange(len(labels)), labels] = 1.0
    dims = features.shape[1]

    def loss_and_gradient(params: np.ndarray) -> tuple[float, np.ndarray]:
        weights = params[:dims * num_classes].reshape(dims, num_classes)
        logits = standard @ weights + params[-num_classes:]
        logits -= logits.max(axis=1, keepdims=True)
        exponentials = np.exp(logits)
        totals = exponentials.sum(axis=1, keepdims=True)
        loss = float(np.mean(np.log(totals[:, 0]) - (logits * targets).sum(axis=1)))
        error = (exponentials / totals - targets) / len(labels)
        gradient = np.concatenate([(standard.T @ error + 2 * L2_PENALTY * weights).ravel(),
                                   error.sum(axis=0)])
        return loss + L2_PENALTY * float(np.sum(weights * weights)), gradient

    solution = minimize(loss_and_gradient, np.zeros((dims + 1) * num_classes), jac=True,
                        method="L-BFGS-B", options={"maxiter": MAX_ITERATIONS,
                                                    "ftol": TOLERANCE, "gtol": 1e-9})
    weights = solution.x[:dims * num_classes].reshape(dims, num_classes) / scale[:, np.newaxis]
    return weights, solution.x[-num_classes:] - mean @ weights


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
