"""Audit detector: likely mislabeled images, by their out-of-fold probabilities.

Each image's class probabilities come from a softmax regression that never saw it (k folds,
trained on the cached vectors reduced to their top principal components, standardised: the head's
convex objective and solver, training/solver.py). Its L2 penalty is chosen, not fixed: along a path from
strong to weak, the penalty whose out-of-fold probabilities give the given labels the lowest
cross entropy (the best estimate of p(given label | image), which is what judging a label
needs; a fixed penalty makes a model trained on a dozen images certain of its mistakes, and
the right penalty for 10,000 images is not the right one for 100). Above PATH_ROWS rows the
folds' models are fitted on a seeded sample of that many: each row is still judged by a model
that never saw it (a row outside the sample by its fold's), and the cost stops growing with N.
An image is flagged when the most probable class out of fold (its suggestion) is another than
its label, by odds of at least MIN_ODDS to 1: with the penalty chosen for honest probabilities,
odds with a meaning, whatever the number of classes. (Confident learning's per-class
thresholds, Northcutt et al. 2021, with a margin of 0.8 were the rule before: on label flips
injected into real images it found fewer flips at lower precision; measured: docs/audit.md.)
Classes of fewer than MIN_CLASS_IMAGES images take no part: a fold's model has seen too few of
them to doubt a label or suggest one (as cleanlab's `min_examples_per_class`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Union

import numpy as np

from retrainer.audit._threads import in_order
from retrainer.audit.neighbours import one_blas_thread, principal_components
from retrainer.training.solver import LayerFit, SolverOptions, Standardization, fit_layer

FOLDS = 5
DIMENSIONS = 64
# l2 * |weights|^2 per example on standardised features, strong to weak, in half decades
L2_PATH = tuple(float(f"{10 ** (-exponent / 2):.0e}") for exponent in range(10))
PARALLEL_LOGITS = 1 << 20  # rows x classes from which the folds are fitted on every CPU
PATIENCE = 2  # penalties in a row without a lower out-of-fold cross entropy: the path stops
PATH_ROWS = 8192  # above this many rows, the folds' models are fitted on a seeded sample
MAX_ITERATIONS = 100
MIN_ODDS = 20.0  # p(suggested) / p(given), at least, of a reported issue
MIN_CLASS_IMAGES = 5  # each fold's model then trained on at least 4 images of a flagged class
TOLERANCE = 1e-5  # relative change of the loss at which a fit has converged
CHUNK_ROWS = 16384  # rows of probabilities computed at once (128 MB at 1,000 classes)
SOLVER = SolverOptions(max_iterations=MAX_ITERATIONS, tolerance=TOLERANCE)


@dataclasses.dataclass(frozen=True)
class LabelIssue:
    """An image whose label the out-of-fold model disputes."""

    position: int
    suggested: int  # class index
    score: float  # 1 - out-of-fold probability of the given label; higher = more likely wrong


Layer = tuple[np.ndarray, np.ndarray]  # float32 weights [D, C] and biases [C] on the features


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
        l2: the penalty the layers were fitted with (chosen by `fit_out_of_fold`).
        counts: int64 [C] images of each class the layers were fitted on (all folds).
    """

    features: np.ndarray
    folds: np.ndarray
    layers: tuple[Optional[Layer], ...]
    num_classes: int
    l2: float
    counts: np.ndarray

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
    """Softmax regressions that each never saw one fold of the rows (see OutOfFold), at the
    penalty of L2_PATH whose out-of-fold probabilities give the labels the lowest cross entropy
    (on a seeded sample of PATH_ROWS rows when there are more).

    Args:
        vectors: float32 [N, D] bottleneck vectors.
        labels: int64 [N] class indices.
        num_classes: C.
        seed: fold assignment (and path sample) seed.
    """
    features = (principal_components(vectors, DIMENSIONS).astype(np.float32) if len(labels)
                else np.zeros((0, DIMENSIONS), np.float32))
    folds = _stratified_folds(labels, FOLDS, seed)
    sample = (np.sort(np.random.default_rng(seed).permutation(len(labels))[:PATH_ROWS])
              if len(labels) > PATH_ROWS else np.arange(len(labels)))
    l2, layers = _penalty_path(features[sample], labels[sample], folds[sample], num_classes)
    return OutOfFold(features, folds, tuple(layers), num_classes, l2,
                     np.bincount(labels[sample], minlength=num_classes))


def _fold_fit(features: np.ndarray, labels: np.ndarray, num_classes: int, l2: float,
              fold: tuple[Optional[np.ndarray], Optional[Standardization], Optional[LayerFit]],
              ) -> Optional[LayerFit]:
    """One fold's fit at `l2`: (its training rows, their statistics, its fit at the previous
    penalty, warm-starting this one); None for a fold without training rows."""
    rows, statistics, previous = fold
    if rows is None:
        return None
    return fit_layer(features[rows], labels[rows], num_classes, l2,
                     start=None if previous is None else previous.state, statistics=statistics,
                     options=SOLVER)


def _penalty_path(features: np.ndarray, labels: np.ndarray, folds: np.ndarray,
                  num_classes: int) -> tuple[float, list[Optional[Layer]]]:
    """(penalty, per-fold layers) of L2_PATH's best out-of-fold cross entropy; each fold's fits
    warm-started from its previous penalty's, stopping after PATIENCE penalties without a better
    one. A fold without held-out or without training rows gets None."""
    training = [folds != fold if (folds == fold).any() and not (folds == fold).all() else None
                for fold in range(FOLDS)]
    statistics = [None if rows is None else Standardization.of(features[rows])
                  for rows in training]
    fits: list[Optional[LayerFit]] = [None] * FOLDS
    layers: list[Optional[Layer]] = [None] * FOLDS
    best: tuple[float, float, list[Optional[Layer]]] = (np.inf, L2_PATH[0], layers)
    since_best = 0
    # The folds' fits are independent: one per CPU, each on one BLAS thread (small products,
    # whose threads would only spin against each other). At 1,000 classes the path is most of
    # the audit's time, and it ran on one core.
    parallel = len(features) * num_classes >= PARALLEL_LOGITS
    for l2 in L2_PATH:
        with one_blas_thread():
            fits = list(in_order(functools.partial(_fold_fit, features, labels, num_classes, l2),
                                 zip(training, statistics, fits), threads=parallel))
        layers = [None if fit is None else (fit.weights, fit.biases) for fit in fits]
        model = OutOfFold(features, folds, tuple(layers), num_classes, l2, np.zeros(0, np.int64))
        cross_entropy = sum(
            -float(np.sum(np.log(np.maximum(
                chunk[np.arange(len(chunk)), labels[rows]], np.finfo(np.float64).tiny))))
            for rows in _chunks(len(labels)) for chunk in (model[rows],))
        if cross_entropy < best[0]:
            best, since_best = (cross_entropy, l2, layers), 0
        else:
            since_best += 1
            if since_best >= PATIENCE:
                break
    return best[1], best[2]


def out_of_fold_probabilities(
    vectors: np.ndarray, labels: np.ndarray, num_classes: int, seed: int = 0
) -> np.ndarray:
    """Each row's class probabilities from a softmax regression trained without that row:
    float64 [N, C], each row summing to 1 (`fit_out_of_fold`, every row at once)."""
    return fit_out_of_fold(vectors, labels, num_classes, seed)[:]


def find_label_issues(probabilities: Union[np.ndarray, OutOfFold],
                      labels: np.ndarray) -> list[LabelIssue]:
    """Images whose most probable class out of fold is another than their label, by odds of at
    least MIN_ODDS to 1, most likely wrong first (classes the model was fitted on fewer
    than MIN_CLASS_IMAGES images of are neither flagged nor suggested).

    Args:
        probabilities: float [N, C] out-of-fold probabilities, or the OutOfFold model that
            computes them (then CHUNK_ROWS rows at a time: no [N, C] array).
        labels: int64 [N] given class indices.

    Returns:
        LabelIssue list sorted by score, descending.
    """
    counts = (np.bincount(labels, minlength=probabilities.shape[1])
              if isinstance(probabilities, np.ndarray) else probabilities.counts)
    counted = counts >= MIN_CLASS_IMAGES

    def disputed_in(rows: slice) -> list[LabelIssue]:
        chunk, chunk_labels = probabilities[rows], labels[rows]
        suggested = np.where(counted, chunk, -1.0).argmax(axis=1)
        given = chunk[np.arange(len(chunk)), chunk_labels]
        odds = chunk[np.arange(len(chunk)), suggested] / np.maximum(given, 1e-300)
        disputed = ((suggested != chunk_labels) & (odds >= MIN_ODDS) & counted[chunk_labels]
                    & counted[suggested])
        return [LabelIssue(int(rows.start + row), int(suggested[row]), float(1.0 - given[row]))
                for row in np.flatnonzero(disputed)]

    # A million rows of 1,000 classes is a billion exponentials: the chunks on every CPU
    # (each chunk's arithmetic as on one).
    chunks = _chunks(len(labels))
    issues = [issue for found in in_order(disputed_in, chunks, threads=len(chunks) > 1)
              for issue in found]
    return sorted(issues, key=lambda issue: (-issue.score, issue.position))


def _chunks(rows: int) -> list[slice]:
    return [slice(start, start + CHUNK_ROWS) for start in range(0, rows, CHUNK_ROWS)]


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
