"""Audit detector: likely mislabeled images, by confident learning on out-of-fold probabilities.

Each image's class probabilities come from a softmax regression that never saw it (k folds,
trained on the cached vectors reduced to their top principal components, standardised, at a
fixed L2 penalty: the head's convex objective and numpy solver, training/solver.py).
Confident learning (Northcutt et al. 2021, as cleanlab's
`find_label_issues`): class j's threshold is the mean
probability of j over images labelled j; an image is confidently of class j when p_j reaches
that threshold (the largest such p_j wins). Images confidently of another class than their label
are issues; `MIN_MARGIN` keeps only those the model prefers clearly (measured: docs/audit.md).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

import numpy as np

from retrainer.audit.neighbours import one_blas_thread, principal_components
from retrainer.training.solver import SolverOptions, fit_layer

FOLDS = 5
DIMENSIONS = 64
L2_PENALTY = 5e-3  # l2 * |weights|^2 per example, on standardised features
MAX_ITERATIONS = 100
MIN_MARGIN = 0.8  # p(suggested) - p(given) of a reported issue
TOLERANCE = 1e-5  # relative change of the loss at which a fit has converged
CHUNK_ROWS = 16384  # rows of probabilities computed at once (128 MB at 1,000 classes)
SOLVER = SolverOptions(max_iterations=MAX_ITERATIONS, tolerance=TOLERANCE)


@dataclasses.dataclass(frozen=True)
class LabelIssue:
    """An image whose label the out-of-fold model confidently disputes."""

    position: int
    suggested: int  # class index
    score: float  # 1 - out-of-fold probability of the given label; higher = more likely wrong


@dataclasses.dataclass(frozen=True)
class OutOfFold:
    """The out-of-fold model: each row's probabilities come from the layer of its fold, computed
    when asked for a slice of rows, so no [N, C] array is ever held (a million images of 1,000
    classes: 8 GB). Sliced like the array it stands for: `out_of_fold[start:stop]`.

    Attributes:
        features: float32 [N, DIMENSIONS] reduced vectors.
        folds: int64 [N] fold of each row.
        layers: per fold, (float32 [DIMENSIONS, C] weights, [C] biases), or None: that fold's
            rows get uniform probabilities (nothing to train on without them).
        num_classes: C.
    """

    features: np.ndarray
    folds: np.ndarray
    layers: tuple[Optional[tuple[np.ndarray, np.ndarray]], ...]
    num_classes: int

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, rows: slice) -> np.ndarray:
        """float64 [rows, C] probabilities; each row sums to 1."""
        features, folds = self.features[rows], self.folds[rows]
        probabilities = np.full((len(features), self.num_classes), 1.0 / self.num_classes)
        for fold, layer in enumerate(self.layers):
            chosen = folds == fold
            if layer is not None and chosen.any():
                probabilities[chosen] = _softmax(features[chosen] @ layer[0] + layer[1])
        return probabilities


def fit_out_of_fold(vectors: np.ndarray, labels: np.ndarray, num_classes: int,
                    seed: int = 0) -> OutOfFold:
    """Softmax regressions that each never saw one fold of the rows (see OutOfFold).

    Args:
        vectors: float32 [N, D] bottleneck vectors.
        labels: int64 [N] class indices.
        num_classes: C.
        seed: fold assignment seed.
    """
    features = (principal_components(vectors, DIMENSIONS).astype(np.float32) if len(labels)
                else np.zeros((0, DIMENSIONS), np.float32))
    folds = _stratified_folds(labels, FOLDS, seed)
    layers: list[Optional[tuple[np.ndarray, np.ndarray]]] = []
    for fold in range(FOLDS):
        held_out = folds == fold
        if not held_out.any() or held_out.all():
            layers.append(None)
            continue
        layers.append(softmax_regression(features[~held_out], labels[~held_out], num_classes))
    return OutOfFold(features, folds, tuple(layers), num_classes)


def out_of_fold_probabilities(
    vectors: np.ndarray, labels: np.ndarray, num_classes: int, seed: int = 0
) -> np.ndarray:
    """Each row's class probabilities from a softmax regression trained without that row:
    float64 [N, C], each row summing to 1 (`fit_out_of_fold`, every row at once)."""
    return fit_out_of_fold(vectors, labels, num_classes, seed)[:]


def softmax_regression(features: np.ndarray, labels: np.ndarray, num_classes: int,
                       l2: float = L2_PENALTY) -> tuple[np.ndarray, np.ndarray]:
    """The layer minimising mean cross entropy + l2 x |weights|^2 on the standardised features
    (the head's solver, training/solver.py: at most MAX_ITERATIONS L-BFGS steps, one BLAS
    thread), as float32 weights [D, C] and biases [C] on the features as given. A warm-started
    path of penalties calls `fit_layer` itself, with each fit's `state` as the next `start`.

    Args:
        features: float32 [N, D], N >= 1.
        labels: int64 [N] class indices below `num_classes`.
        num_classes: C.
        l2: the penalty on the standardised weights.
    """
    with one_blas_thread():  # small products: threads would only spin against each other
        fit = fit_layer(features, labels, num_classes, l2, options=SOLVER)
    return fit.weights, fit.biases


def find_label_issues(probabilities: Union[np.ndarray, OutOfFold],
                      labels: np.ndarray) -> list[LabelIssue]:
    """Confident learning's off-diagonal examples, most likely wrong first.

    Args:
        probabilities: float [N, C] out-of-fold probabilities, or the OutOfFold model that
            computes them (then CHUNK_ROWS rows at a time: two passes, no [N, C] array).
        labels: int64 [N] given class indices.

    Returns:
        LabelIssue list sorted by score, descending.
    """
    num_classes = probabilities.shape[1] if isinstance(probabilities, np.ndarray) else (
        probabilities.num_classes)
    chunks = [slice(start, start + CHUNK_ROWS) for start in range(0, len(labels), CHUNK_ROWS)]
    given_sums = np.zeros(num_classes)
    for rows in chunks:
        chunk, chunk_labels = probabilities[rows], labels[rows]
        given_sums += np.bincount(chunk_labels, chunk[np.arange(len(chunk)), chunk_labels],
                                  num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    thresholds = np.where(counts > 0, given_sums / np.maximum(counts, 1), np.inf)
    issues = []
    for rows in chunks:
        chunk, chunk_labels = probabilities[rows], labels[rows]
        confident = np.where(chunk >= thresholds, chunk, -1.0)
        suggested = confident.argmax(axis=1)
        has_confident = confident.max(axis=1) >= 0
        everyone = np.arange(len(chunk))
        given = chunk[everyone, chunk_labels]
        margin = chunk[everyone, suggested] - given
        disputed = has_confident & (suggested != chunk_labels) & (margin >= MIN_MARGIN)
        issues += [LabelIssue(int(rows.start + row), int(suggested[row]), float(1.0 - given[row]))
                   for row in np.flatnonzero(disputed)]
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
