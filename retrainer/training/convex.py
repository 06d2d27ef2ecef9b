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
penalties suits every extractor and the exported layer is the usual `features @ W + b`. On large
splits the path runs on a sample of rows and only the chosen penalty is fitted on all of them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Optional

import numpy as np
import tensorflow as tf
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from retrainer.training.objectives import SOFTMAX, Objective

log = logging.getLogger(__name__)

# Strong to weak, in half decades: the penalty on the standardized weights, added to the mean loss.
DEFAULT_L2_PATH = tuple(float(f"{10 ** (-exponent / 2):.0e}") for exponent in range(2, 14))
NO_VALIDATION_L2 = 1e-2  # chosen most often on 1k-image sets, where splits come out empty
_MIN_SCALE = 1e-6  # features whose training spread is below this are only centred


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
    tolerance: float = 1e-5
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
    """One split's loss (and its gradient) as a function of the parameters [W (D x C), b] of
    the layer on standardized features (centred and scaled by the training split's statistics:
    L-BFGS then needs far fewer iterations, and one penalty path suits every extractor)."""

    def __init__(self, features: np.ndarray, targets: np.ndarray, statistics: _Statistics,
                 num_classes: int, config: ConvexConfig) -> None:
        self.features = tf.constant(features, tf.float32)
        self.targets = tf.constant(targets)
        self.statistics = statistics
        self.shape = (features.shape[1], num_classes)
        self.objective, self.label_smoothing = config.objective, config.label_smoothing
        size = self.shape[0] * self.shape[1] + self.shape[1]
        vector = tf.TensorSpec([size], tf.float32)
        self.loss_and_gradient = tf.function(
            self._loss_and_gradient, input_signature=[vector, tf.TensorSpec([], tf.float32)])
        self.metrics = tf.function(self._metrics, input_signature=[vector])

    def layer(self, params: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Parameters -> (float32 [D, C] weights, [C] biases) on raw features."""
        size = self.shape[0] * self.shape[1]
        weights = tf.reshape(params[:size], self.shape) / self.statistics.scale[:, tf.newaxis]
        biases = params[size:] - tf.linalg.matvec(weights, self.statistics.mean,
                                                  transpose_a=True)
        return weights, biases

    def _logits(self, params: tf.Tensor) -> tf.Tensor:
        weights, biases = self.layer(params)
        return tf.matmul(self.features, weights) + biases

    def _loss_and_gradient(self, params: tf.Tensor, l2: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss = self.objective.loss(self.targets, self._logits(params), self.label_smoothing)
            loss += l2 * tf.reduce_sum(tf.square(params[:self.shape[0] * self.shape[1]]))
        return loss, tape.gradient(loss, params)

    def _metrics(self, params: tf.Tensor) -> tf.Tensor:
        """[accuracy, cross entropy] of the split (float32 [2])."""
        logits = self._logits(params)
        return tf.stack([self.objective.accuracy(self.targets, logits),
                         self.objective.loss(self.targets, logits)])


@dataclasses.dataclass(frozen=True)
class _Statistics:
    """The training features' mean and spread (float32 [D] each)."""

    mean: tf.Tensor
    scale: tf.Tensor

    @classmethod
    def of(cls, features: np.ndarray) -> "_Statistics":
        mean = features.mean(axis=0, dtype=np.float64)
        scale = features.std(axis=0, dtype=np.float64)
        scale = np.where(scale > _MIN_SCALE, scale, 1.0)
        return cls(tf.constant(mean, tf.float32), tf.constant(scale, tf.float32))


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
    statistics = _Statistics.of(train_features)
    validation = None
    path = config.l2_path
    if len(validation_features):
        validation = _Problem(validation_features, validation_targets, statistics,
                              num_classes, config)
    elif len(path) > 1:
        path = (NO_VALIDATION_L2,)
        log.warning("No validation images: the L2 strength cannot be chosen; using %g.", path[0])
    rows = len(train_features)
    sample = np.arange(rows)
    if rows > config.path_rows:
        sample = np.sort(np.random.default_rng(0).permutation(rows)[:config.path_rows])
    train = _Problem(train_features[sample], train_targets[sample], statistics, num_classes, config)
    walk = _Path(train, validation, num_classes, config)
    for l2 in path:
        walk.fit(l2)
        if walk.since_best >= config.patience:
            break
    best = walk.best
    if len(sample) < rows:
        chosen = walk.points[best].l2 * len(sample) / rows
        walk.state = walk.states[best]
        walk.train = _Problem(train_features, train_targets, statistics, num_classes, config)
        walk.fit(chosen)
        best = len(walk.points) - 1
    weights, biases = walk.train.layer(tf.constant(walk.states[best], tf.float32))
    accuracy = walk.points[best].validation_accuracy
    log.info("Chose L2 strength %g (validation accuracy %s).", walk.points[best].l2,
             "n/a" if accuracy is None else f"{accuracy * 100:.1f}%")
    return ConvexFit(weights.numpy(), biases.numpy(), walk.points[best].l2, tuple(walk.points),
                     best)


class _Path:
    """Fits along the penalties, each warm-started from the last, scored on validation."""

    def __init__(self, train: _Problem, validation: Optional[_Problem], num_classes: int,
                 config: ConvexConfig) -> None:
        self.train, self.validation, self.config = train, validation, config
        self.state = np.zeros(train.shape[0] * num_classes + num_classes)
        self.states: list[np.ndarray] = []
        self.points: list[PathPoint] = []
        self.best, self.since_best = 0, 0

    def fit(self, l2: float) -> None:
        started = time.perf_counter()
        self.state, iterations = _minimize(self.train, self.state, l2, self.config)
        self.states.append(self.state)
        params = tf.constant(self.state, tf.float32)
        train_accuracy, train_loss = self.train.metrics(params).numpy().tolist()
        validation_accuracy = validation_loss = None
        if self.validation is not None:
            validation_accuracy, validation_loss = self.validation.metrics(params).numpy().tolist()
        self.points.append(PathPoint(l2, iterations, train_accuracy, train_loss,
                                     validation_accuracy, validation_loss,
                                     time.perf_counter() - started))
        _log_point(self.points[-1])
        if self.validation is not None and len(self.points) > 1:
            if _score(self.points[-1]) > _score(self.points[self.best]):
                self.best, self.since_best = len(self.points) - 1, 0
            else:
                self.since_best += 1


def _minimize(problem: _Problem, start: np.ndarray, l2: float,
              config: ConvexConfig) -> tuple[np.ndarray, int]:
    """L-BFGS-B from `start` at penalty `l2`: (float64 parameters, iterations run)."""
    penalty = tf.constant(l2, tf.float32)

    def loss_and_gradient(params: np.ndarray) -> tuple[float, np.ndarray]:
        loss, gradient = problem.loss_and_gradient(tf.constant(params, tf.float32), penalty)
        return float(loss), gradient.numpy().astype(np.float64)

    # One BLAS thread for scipy's L-BFGS-B: its small products are fastest that way, and its
    # thread pool and TensorFlow's would otherwise spin against each other (24 ms an iteration
    # instead of well under 1 ms, measured on 2 cores).
    with threadpool_limits(limits=1, user_api="blas"):
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
