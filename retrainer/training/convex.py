"""Head training by a full-batch convex fit, its L2 strength chosen on the validation split.

The reference protocol for frozen features (a logistic regression whose L2 penalty is tuned on
held-out data, Kornblith et al. 2019): the loss is convex in the layer's weights, so L-BFGS on the
whole training split finds its minimum for each penalty. Penalties are tried from strong to weak,
each fit starting from the previous one's weights (a warm start: each costs a few dozen
iterations), and the one with the best validation accuracy (ties: lower validation cross entropy)
is kept. The path stops once `patience` penalties in a row have not beaten the best. Only the
training and validation splits are read here; the test split is never seen.

The losses and gradients are float32 TensorFlow (on a GPU when there is one); scipy's L-BFGS-B
steers the few thousand parameters. Features are centred and scaled by the training split's own
statistics inside the fit, and that is folded back into the returned weights, so one path of
penalties suits every extractor and the exported layer is the usual `features @ W + b`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Optional

import numpy as np
import tensorflow as tf
from scipy.optimize import minimize

from retrainer.training.objectives import SOFTMAX, Objective

log = logging.getLogger(__name__)

# Strong to weak, in half decades: the penalty on the standardized weights, added to the mean loss.
DEFAULT_L2_PATH = tuple(float(f"{10 ** (-exponent / 2):.0e}") for exponent in range(2, 14))
NO_VALIDATION_L2 = 1e-2  # chosen most often on 1k-image sets, where splits come out empty
_MIN_SCALE = 1e-6  # features whose training spread is below this are only centred
_CORRELATION_ROWS = 16384  # a sample this large estimates the preconditioner well enough


@dataclasses.dataclass(frozen=True)
class ConvexConfig:
    """How to fit the head (the path, and how long each point of it may take).

    Attributes:
        l2_path: penalties to try, strongest first; one value = a fixed penalty, no choice.
        max_iterations: L-BFGS iterations per penalty.
        patience: penalties in a row without a better validation score before the path stops.
        label_smoothing: targets smoothed towards uniform (0 = off).
        objective: softmax (one label per image) or sigmoid (several).
        tolerance: relative change of the loss below which a fit counts as converged.
        path_rows: above this many training rows, the path runs on a sample of this many.
    """

    l2_path: tuple[float, ...] = DEFAULT_L2_PATH
    max_iterations: int = 200
    patience: int = 2
    label_smoothing: float = 0.0
    objective: Objective = SOFTMAX
    tolerance: float = 1e-6
    path_rows: int = 8192


@dataclasses.dataclass(frozen=True)
class PathPoint:
    """One penalty of the path and how its fit scored (validation_* None without validation)."""

    l2: float
    iterations: int
    train_accuracy: float
    train_cross_entropy: float
    validation_accuracy: Optional[float]
    validation_cross_entropy: Optional[float]
    seconds: float


@dataclasses.dataclass(frozen=True)
class ConvexFit:
    """The chosen layer: logits = features @ weights + biases.

    Attributes:
        weights: float32 [D, C].
        biases: float32 [C].
        l2: the chosen penalty.
        path: every penalty tried, in order.
        chosen: index of the chosen penalty in `path`.
    """

    weights: np.ndarray
    biases: np.ndarray
    l2: float
    path: tuple[PathPoint, ...]
    chosen: int


class _Problem:
    """One split's loss (and its gradient) as a function of the preconditioned parameters.

    Parameters are [W~ (D x C), b]: the layer on standardized features is W = V diag(r) W~, with
    V the eigenvectors of the training features' correlation matrix and r set per penalty, so
    that every direction has about the same curvature (L-BFGS then needs few iterations).
    """

    def __init__(self, features: np.ndarray, targets: np.ndarray, basis: _Basis,
                 num_classes: int, config: ConvexConfig) -> None:
        self.features = basis.project(features)
        self.targets = tf.constant(targets)
        self.basis = basis
        self.shape = (int(basis.vectors.shape[1]), num_classes)
        self.objective, self.label_smoothing = config.objective, config.label_smoothing
        size = self.shape[0] * self.shape[1] + self.shape[1]
        vector, scalar = tf.TensorSpec([size], tf.float32), tf.TensorSpec([], tf.float32)
        rows = tf.TensorSpec([self.shape[0]], tf.float32)
        self.loss_and_gradient = tf.function(self._loss_and_gradient,
                                             input_signature=[vector, rows, scalar])
        self.metrics = tf.function(self._metrics, input_signature=[vector, rows])

    def layer(self, params: tf.Tensor, rows: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Parameters -> (float32 [D, C] weights, [C] biases) on raw features."""
        size = self.shape[0] * self.shape[1]
        standardized = tf.matmul(self.basis.vectors,
                                 rows[:, tf.newaxis] * tf.reshape(params[:size], self.shape))
        weights = standardized / self.basis.scale[:, tf.newaxis]
        biases = params[size:] - tf.linalg.matvec(weights, self.basis.mean, transpose_a=True)
        return weights, biases

    def _logits(self, params: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
        size = self.shape[0] * self.shape[1]
        weights = rows[:, tf.newaxis] * tf.reshape(params[:size], self.shape)
        return tf.matmul(self.features, weights) + params[size:]

    def _loss_and_gradient(self, params: tf.Tensor, rows: tf.Tensor, l2: tf.Tensor):
        size = self.shape[0] * self.shape[1]
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss = self.objective.loss(self.targets, self._logits(params, rows),
                                       self.label_smoothing)
            # ||V diag(r) W~||^2 = ||diag(r) W~||^2: V is orthonormal
            scaled = rows[:, tf.newaxis] * tf.reshape(params[:size], self.shape)
            loss += l2 * tf.reduce_sum(tf.square(scaled))
        return loss, tape.gradient(loss, params)

    def _metrics(self, params: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
        """[accuracy, cross entropy] of the split (float32 [2])."""
        logits = self._logits(params, rows)
        return tf.stack([self.objective.accuracy(self.targets, logits),
                         self.objective.loss(self.targets, logits)])


@dataclasses.dataclass(frozen=True)
class _Basis:
    """The training features' statistics: mean and spread per feature, and the eigenvectors
    (columns of float32 [D, D]) and eigenvalues of their correlation matrix."""

    mean: tf.Tensor
    scale: tf.Tensor
    vectors: tf.Tensor
    values: np.ndarray

    @classmethod
    def of(cls, features: np.ndarray) -> "_Basis":
        mean = features.mean(axis=0, dtype=np.float64)
        scale = features.std(axis=0, dtype=np.float64)
        scale = np.where(scale > _MIN_SCALE, scale, 1.0)
        rows = np.random.default_rng(0).permutation(len(features))[:_CORRELATION_ROWS]
        sample = tf.constant(((features[np.sort(rows)] - mean) / scale).astype(np.float32))
        correlation = tf.matmul(sample, sample, transpose_a=True) / len(rows)
        values, vectors = tf.linalg.eigh(tf.cast(correlation, tf.float64))
        return cls(tf.constant(mean, tf.float32), tf.constant(scale, tf.float32),
                   tf.cast(vectors, tf.float32), np.maximum(values.numpy(), 0.0))

    def project(self, features: np.ndarray) -> tf.Tensor:
        """float32 [N, D] raw features -> [N, K] standardized, on the kept eigen-directions."""
        standardized = (tf.constant(features, tf.float32) - self.mean) / self.scale
        return tf.matmul(standardized, self.vectors)

    def rows(self, l2: float, num_classes: int) -> np.ndarray:
        """float32 [D]: per eigen-direction, 1 / sqrt(its curvature at penalty `l2`), the data
        term's curvature taken as eigenvalue / C (softmax's spread at the start)."""
        return (1.0 / np.sqrt(self.values / num_classes + 2.0 * l2)).astype(np.float32)


def fit_head(train_features: np.ndarray, train_targets: np.ndarray,
             validation_features: np.ndarray, validation_targets: np.ndarray,
             num_classes: int, config: ConvexConfig = ConvexConfig()) -> ConvexFit:
    """Fit the layer on the training split for each penalty; keep the best on validation.

    Above `config.path_rows` training rows, the path runs on a seeded sample of that many rows
    (each fit there costs a fraction of a full one), and the chosen penalty, rescaled to the
    whole split (penalty x sample / rows: the same prior against more data), is then fitted on
    every row, starting from the sample's weights; that final fit is the last point of the path.

    Args:
        train_features: float32 [N, D] training vectors, N >= 1.
        train_targets: the objective's targets of those rows (int64 [N] or float32 [N, C]).
        validation_features: float32 [M, D]; M may be 0.
        validation_targets: their targets.
        num_classes: C.
        config: the path and the fit's limits.

    Returns:
        ConvexFit. Without validation rows nothing can be chosen: the fit uses
        NO_VALIDATION_L2, with a warning.
    """
    basis = _Basis.of(train_features)
    validation = None
    path = config.l2_path
    if len(validation_features):
        validation = _Problem(validation_features, validation_targets, basis, num_classes,
                              config)
    elif len(path) > 1:
        path = (NO_VALIDATION_L2,)
        log.warning("No validation images: the L2 strength cannot be chosen; using %g.", path[0])
    rows = len(train_features)
    sample = np.arange(rows)
    if rows > config.path_rows:
        sample = np.sort(np.random.default_rng(0).permutation(rows)[:config.path_rows])
    train = _Problem(train_features[sample], train_targets[sample], basis, num_classes, config)
    walk = _Path(train, validation, num_classes, config)
    for l2 in path:
        walk.fit(l2)
        if walk.since_best >= config.patience:
            break
    best = walk.best
    if len(sample) < rows:
        chosen = walk.points[best].l2 * len(sample) / rows
        walk.state = walk.states[best]
        walk.train = _Problem(train_features, train_targets, basis, num_classes, config)
        walk.fit(chosen)
        best = len(walk.points) - 1
    weights, biases = walk.train.layer(*walk.fits[best])
    log.info("Chose L2 strength %g (validation accuracy %s).", walk.points[best].l2,
             "n/a" if walk.points[best].validation_accuracy is None
             else f"{walk.points[best].validation_accuracy * 100:.1f}%")
    return ConvexFit(weights.numpy(), biases.numpy(), walk.points[best].l2, tuple(walk.points),
                     best)


class _Path:
    """Fits along the penalties, each warm-started from the last, scored on validation."""

    def __init__(self, train: _Problem, validation: Optional[_Problem], num_classes: int,
                 config: ConvexConfig) -> None:
        self.train, self.validation, self.config = train, validation, config
        self.num_classes = num_classes
        dims = train.shape[0]
        # (V^T W on standardized features, biases): what carries from one penalty to the next
        self.state = (np.zeros((dims, num_classes)), np.zeros(num_classes))
        self.states: list[tuple[np.ndarray, np.ndarray]] = []
        self.points: list[PathPoint] = []
        self.fits: list[tuple[tf.Tensor, tf.Tensor]] = []
        self.best, self.since_best = 0, 0

    def fit(self, l2: float) -> None:
        started = time.perf_counter()
        rows = self.train.basis.rows(l2, self.num_classes)
        dims = len(rows)
        start = np.concatenate([(self.state[0] / rows[:, np.newaxis]).ravel(), self.state[1]])
        params, iterations = _minimize(self.train, start, rows, l2, self.config)
        self.state = (params[:dims * self.num_classes].reshape(dims, -1) * rows[:, np.newaxis],
                      params[dims * self.num_classes:])
        self.states.append(self.state)
        fit = (tf.constant(params, tf.float32), tf.constant(rows))
        self.fits.append(fit)
        train_accuracy, train_loss = self.train.metrics(*fit).numpy().tolist()
        validation_accuracy = validation_loss = None
        if self.validation is not None:
            validation_accuracy, validation_loss = self.validation.metrics(*fit).numpy().tolist()
        self.points.append(PathPoint(l2, iterations, train_accuracy, train_loss,
                                     validation_accuracy, validation_loss,
                                     time.perf_counter() - started))
        _log_point(self.points[-1])
        if self.validation is not None and len(self.points) > 1:
            if _score(self.points[-1]) > _score(self.points[self.best]):
                self.best, self.since_best = len(self.points) - 1, 0
            else:
                self.since_best += 1


def _minimize(problem: _Problem, start: np.ndarray, rows: np.ndarray, l2: float,
              config: ConvexConfig) -> tuple[np.ndarray, int]:
    """L-BFGS-B from `start` at penalty `l2`: (float64 parameters, iterations run)."""
    penalty, rows_tensor = tf.constant(l2, tf.float32), tf.constant(rows)

    def loss_and_gradient(params: np.ndarray) -> tuple[float, np.ndarray]:
        loss, gradient = problem.loss_and_gradient(tf.constant(params, tf.float32), rows_tensor,
                                                   penalty)
        return float(loss), gradient.numpy().astype(np.float64)

    solution = minimize(loss_and_gradient, start, jac=True, method="L-BFGS-B",
                        options={"maxiter": config.max_iterations, "ftol": config.tolerance,
                                 "gtol": 1e-9})
    return solution.x, int(solution.nit)


def _score(point: PathPoint) -> tuple[float, float]:
    """Higher is better: validation accuracy, then lower validation cross entropy."""
    return (point.validation_accuracy or 0.0, -(point.validation_cross_entropy or 0.0))


def _log_point(point: PathPoint) -> None:
    validation = ("" if point.validation_accuracy is None else
                  f", validation accuracy = {point.validation_accuracy * 100:.1f}%, "
                  f"cross entropy = {point.validation_cross_entropy:f}")
    log.info("L2 %g: %d iterations, train accuracy = %.1f%%, cross entropy = %f%s (%.2f s)",
             point.l2, point.iterations, point.train_accuracy * 100, point.train_cross_entropy,
             validation, point.seconds)
