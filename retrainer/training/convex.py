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
statistics inside the fit (no scale below a tenth of the median feature's, so that no exported
weight dwarfs the others and int8 exports keep the layer), and that is folded back into the
returned weights, so one path of penalties suits every extractor and the exported layer is the
usual `features @ W + b`. On large
splits the path runs on a sample of rows and only the chosen penalty is fitted on all of them.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any, Iterable, Iterator, Optional

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
# Every other feature is scaled by at least this share of the median feature's spread. A feature
# that barely varies (int8 vectors have many: 1 % of Lite0's dims spread < 0.01, the median
# 0.23) would otherwise carry a raw weight of its standardized weight / its spread: |W| up to 207
# where the mean is 0.27, and int8 weight quantization of the exported layer (TFLite dynamic and
# int8, ONNX int8: one scale per class = max |W| / 127) then rounds every ordinary weight to 0.
# Measured (Lite0 int8 vectors, lbfgs): the float layer is unchanged (Fashion-MNIST 1,000 images:
# 85.5 % both; mosaics, multi-label micro-F1 80.6 vs 80.7 %), the int8-rounded layer loses
# nothing instead of 3.2 points (accuracy) and 11 (micro-F1).
MIN_RELATIVE_SCALE = 0.1
CHUNK_VALUES = 2**23  # logits of one chunk of rows (32 MB of float32): rows = this // classes
KEPT_BYTES = 2**30  # features of a split kept as tensors between passes (see _Problem)
KEEP_CLASSES = 64  # from this many classes, the copy is cheap next to the products


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
        fit_values: above this many training rows x classes, the final fit runs on a sample of
            fit_values // classes rows (each of its iterations costs rows x classes x D).
    """

    l2_path: tuple[float, ...] = DEFAULT_L2_PATH
    max_iterations: int = 200
    patience: int = 2
    label_smoothing: float = 0.0
    objective: Objective = SOFTMAX
    tolerance: float = 1e-5
    path_rows: int = 8192
    fit_values: int = 2**26


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
    the layer on standardized features (centred and scaled by the training statistics: L-BFGS
    then needs far fewer iterations, and one penalty path suits every extractor).

    The rows are taken CHUNK_VALUES // C at a time, so no pass holds more than a chunk's
    [rows, C] logits and their gradient (a million rows and 1,000 classes would otherwise need
    4 GB for each). `rows` picks the split's rows out of `features` chunk by chunk (a sample is
    never copied whole). With few classes (below KEEP_CLASSES) a split of at most KEPT_BYTES is
    turned into tensors once; otherwise a chunk at a time on every pass, whose copy costs about
    1/C of the pass's products, so the process never holds the features twice."""

    def __init__(self, features: np.ndarray, targets: np.ndarray, num_classes: int,
                 statistics: _Statistics, functions: _Functions,
                 rows: Optional[np.ndarray] = None) -> None:
        self.statistics, self.functions = statistics, functions
        self.features, self.targets = features, targets
        self.rows = rows  # None: every row, in order
        self.count = len(features) if rows is None else len(rows)
        self.step = max(1, CHUNK_VALUES // num_classes)
        kept = num_classes < KEEP_CLASSES and self.count * features[:1].nbytes <= KEPT_BYTES
        self.kept = list(self._converted()) if kept else None

    def _converted(self) -> Iterator[tuple[tf.Tensor, tf.Tensor, tf.Tensor]]:
        """(features, targets, share of the rows) of each chunk, as tensors."""
        count = self.count
        target_type = tf.float32 if self.functions.objective.multi_label else tf.int64
        for start in range(0, count, self.step):
            stop = min(start + self.step, count)
            chosen = slice(start, stop) if self.rows is None else self.rows[start:stop]
            yield (tf.constant(self.features[chosen], tf.float32),
                   tf.constant(self.targets[chosen], target_type),
                   tf.constant((stop - start) / count, tf.float32))

    def _chunks(self) -> Iterable[tuple[tf.Tensor, tf.Tensor, tf.Tensor]]:
        return self._converted() if self.kept is None else self.kept

    def loss_and_gradient(self, params: tf.Tensor, l2: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        loss, gradient = None, None
        for features, targets, share in self._chunks():
            part = self.functions.loss_and_gradient(features, targets, params, share, l2,
                                                    self.statistics.mean, self.statistics.scale)
            if loss is None:
                loss, gradient = part
                l2 = tf.zeros_like(l2)  # the penalty counts once, in the first chunk
            else:
                loss, gradient = loss + part[0], gradient + part[1]
        assert loss is not None and gradient is not None  # a split has at least one row
        return loss, gradient

    def metrics(self, params: tf.Tensor) -> tf.Tensor:
        """[accuracy, cross entropy] of the split (float32 [2])."""
        total = None
        for features, targets, share in self._chunks():
            part = share * self.functions.metrics(features, targets, params,
                                                  self.statistics.mean, self.statistics.scale)
            total = part if total is None else total + part
        assert total is not None
        return total


class _Functions:
    """The traced loss, gradient and metrics of the layer for any rows, sizes and statistics:
    traced once per objective, so every fit of a process shares them (the audit's folds, the
    search's candidates)."""

    def __init__(self, objective: Objective, label_smoothing: float) -> None:
        self.objective, self.label_smoothing = objective, label_smoothing
        matrix, vector = tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None], tf.float32)
        targets = (tf.TensorSpec([None, None], tf.float32) if objective.multi_label
                   else tf.TensorSpec([None], tf.int64))
        scalar = tf.TensorSpec([], tf.float32)
        # No Python control flow on tensors: no AutoGraph (its conversion was most of the
        # first fit's cost, 0.35 of 0.45 s, on a warm rerun of 1,000 images).
        self.loss_and_gradient = tf.function(
            self._loss_and_gradient, input_signature=[matrix, targets, vector, scalar, scalar,
                                                      vector, vector], autograph=False)
        self.metrics = tf.function(self._metrics, autograph=False,
                                   input_signature=[matrix, targets, vector, vector, vector])

    def _logits(self, features: tf.Tensor, params: tf.Tensor, mean: tf.Tensor,
                scale: tf.Tensor) -> tf.Tensor:
        weights, biases = _layer(params, mean, scale)
        return _times(features, weights) + biases

    def _loss_and_gradient(self, features: tf.Tensor, targets: tf.Tensor, params: tf.Tensor,
                           share: tf.Tensor, l2: tf.Tensor, mean: tf.Tensor, scale: tf.Tensor
                           ) -> tuple[tf.Tensor, tf.Tensor]:
        """A chunk's part of the loss: its mean loss x `share` (its rows' share of the split)
        plus the penalty `l2` x |weights|^2 (given for one chunk only)."""
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss = share * self.objective.loss(
                targets, self._logits(features, params, mean, scale), self.label_smoothing)
            weights = params[:tf.size(params) - tf.size(params) // (tf.size(mean) + 1)]
            loss += l2 * tf.reduce_sum(tf.square(weights))
        return loss, tape.gradient(loss, params)

    def _metrics(self, features: tf.Tensor, targets: tf.Tensor, params: tf.Tensor,
                 mean: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
        logits = self._logits(features, params, mean, scale)
        return tf.stack([self.objective.accuracy(targets, logits),
                         self.objective.loss(targets, logits)])


@functools.lru_cache(maxsize=None)
def _functions(objective: Objective, label_smoothing: float) -> _Functions:
    return _Functions(objective, label_smoothing)


def _layer(params: tf.Tensor, mean: tf.Tensor, scale: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Parameters [D * C + C] of the layer on standardized features -> (float32 [D, C]
    weights, [C] biases) of the same layer on raw features."""
    dims = tf.size(mean)
    classes = tf.size(params) // (dims + 1)
    weights = tf.reshape(params[:dims * classes], [dims, classes]) / scale[:, tf.newaxis]
    biases = params[dims * classes:] - tf.linalg.matvec(weights, mean, transpose_a=True)
    return weights, biases


@tf.custom_gradient
def _times(features: tf.Tensor, weights: tf.Tensor) -> tuple[tf.Tensor, Any]:
    """features [N, D] @ weights [D, C], differentiable in the weights only. Its gradient is
    computed as (upstream^T @ features)^T: TensorFlow's own (features^T @ upstream) is a
    transposed product over the long side that ran 2.7x slower on 56k x 1280 features."""

    def gradient(upstream: tf.Tensor) -> tuple[None, tf.Tensor]:
        return None, tf.transpose(tf.matmul(upstream, features, transpose_a=True))

    return tf.matmul(features, weights), gradient


@dataclasses.dataclass(frozen=True)
class _Statistics:
    """The training features' mean and spread (float32 [D] each)."""

    mean: tf.Tensor
    scale: tf.Tensor

    @classmethod
    def of(cls, features: tf.Tensor) -> "_Statistics":
        mean, variance = tf.nn.moments(features, axes=[0])
        scale = tf.sqrt(variance)
        floor = MIN_RELATIVE_SCALE * tf.sort(scale)[tf.size(scale) // 2]  # x the median
        return cls(mean, tf.where(scale > _MIN_SCALE, tf.maximum(scale, floor),
                                  tf.ones_like(scale)))


def fit_head(train_features: np.ndarray, train_targets: np.ndarray,
             validation_features: np.ndarray, validation_targets: np.ndarray,
             num_classes: int, config: ConvexConfig = ConvexConfig()) -> ConvexFit:
    """Fit the layer on the training split for each penalty; keep the best on validation.

    Above `config.path_rows` training rows, the path runs on a seeded sample of that many rows
    (each fit there costs a fraction of a full one). The sample's best penalty, rescaled to the
    whole split (penalty x sample / rows: the same prior against more data), is then fitted on
    every row, starting from the sample's weights; that final fit is the last point of the path.
    Every row, up to `config.fit_values` rows x classes: beyond, the final fit runs on a larger
    seeded sample of fit_values // classes rows (which holds the path's), so that its cost stops
    growing with the split (800,000 training rows of 1,000 classes: 67,108 rows, 67 a class;
    every row would cost 12x more per iteration; docs/performance.md).
    (The weakest penalty tied with the best within a standard error was tried instead and lost:
    on 70,000 Fashion-MNIST images it scored 0.5 points lower on validation, and the weaker the
    penalty, the more the exports, which compute float32 vectors, lose against int8 ones.)

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
    rows = len(train_features)
    order = np.random.default_rng(0).permutation(rows)  # the samples are its first rows
    sample, final = (np.sort(order[:limit]) for limit in (
        config.path_rows, max(config.path_rows, config.fit_values // max(num_classes, 1))))
    # The sample's statistics standardize every fit: the same penalty means the same prior.
    statistics = _Statistics.of(tf.constant(train_features[sample], tf.float32))
    functions = _functions(config.objective, config.label_smoothing)
    train = _Problem(train_features, train_targets, num_classes, statistics, functions,
                     sample if len(sample) < rows else None)
    validation = None
    path = config.l2_path
    if len(validation_features):
        validation = _Problem(validation_features, validation_targets, num_classes, statistics,
                              functions)
    elif len(path) > 1:
        path = (NO_VALIDATION_L2,)
        log.warning("No validation images: the L2 strength cannot be chosen; using %g.", path[0])
    walk = _Path(train, validation, num_classes, config)
    for l2 in path:
        walk.fit(l2)
        if walk.since_best >= config.patience:
            break
    best = walk.best
    if len(sample) < rows:
        chosen = walk.points[best].l2 * len(sample) / len(final)
        walk.state = walk.states[best]
        walk.train = _Problem(train_features, train_targets, num_classes, statistics, functions,
                              final)
        walk.fit(chosen)
        best = len(walk.points) - 1
    weights, biases = _layer(tf.constant(walk.states[best], tf.float32), statistics.mean,
                             statistics.scale)
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
        self.state = np.zeros((int(train.features.shape[1]) + 1) * num_classes)
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
