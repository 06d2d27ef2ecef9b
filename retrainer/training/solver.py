"""The layer's solver: softmax (or sigmoid) regression on frozen features at one L2 penalty,
in numpy -- no TensorFlow, so a warm rerun need not import it.

The loss is the objective's mean cross entropy plus l2 x |weights|^2, the weights measured on
standardized features (`Standardization`: centred, scaled by the training statistics): L-BFGS
then needs far fewer iterations, and one penalty means the same prior for every extractor. The
standardization is folded into the returned layer, which works on the features as given.
Products are float32 on every core the caller allows (BLAS), sums float64; L-BFGS
(training/_lbfgs.py) steers the parameters. Used by the head's penalty path (training/convex.py)
and by the audit's label model (audit/label_issues.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Optional, Sequence

import numpy as np

# scipy.linalg loads its own OpenBLAS: imported with this module, before any thread controller
# is made (`_blas`, `audit.neighbours.one_blas_thread`), so that each holds it to one thread.
# Imported lazily, its two threads spun beside the solver's and the 70k head fit took 1.4x as
# long.
from scipy.linalg import LinAlgError, cholesky
from scipy.linalg.blas import get_blas_funcs
from threadpoolctl import ThreadpoolController

from retrainer.training._lbfgs import minimize
from retrainer.training.objectives import SOFTMAX, Objective

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
CHUNK_BYTES = 2**23  # ... and at most this many bytes of its features (they stay in the cache)
KEPT_BYTES = 2**30  # a sample of rows gathered once, not on every pass (see Problem)
KEEP_CLASSES = 64  # from this many classes, gathering is cheap next to the products
CORRELATION_ROWS = 2048  # evenly spaced rows the features' correlation is estimated on
# Large fits step in coordinates where the loss's curvature is about even: the standardized
# weights times the Cholesky factor of correlation + RIDGE x classes x l2 (the penalty's share
# of the curvature next to the softmax's, about 1 / classes a class). Measured on 70,000 FM
# vectors: 39 iterations of the final fit instead of 66, the same optimum. Below
# SHAPED_VALUES rows x classes the factoring costs more than the iterations it saves.
RIDGE = 32
SHAPED_VALUES = 2**19


@dataclasses.dataclass(frozen=True)
class SolverOptions:
    """What is minimised and for how long.

    Attributes:
        objective: softmax (one label per image) or sigmoid (several).
        label_smoothing: targets smoothed towards uniform (0 = off).
        max_iterations: L-BFGS iterations.
        tolerance: relative change of the loss below which a fit counts as converged.
    """

    objective: Objective = SOFTMAX
    label_smoothing: float = 0.0
    max_iterations: int = 200
    tolerance: float = 1e-5


class Problem:
    """One split's loss (and its gradient) as a function of the parameters [W (D x C), b] of
    the layer on standardized features (centred and scaled by the training statistics: L-BFGS
    then needs far fewer iterations, and one penalty path suits every extractor). The features
    are never standardized in memory: the standardization is folded into the layer.

    The rows are taken CHUNK_VALUES // C at a time (at most CHUNK_BYTES of features), so no pass
    holds more than a chunk's [rows, C] logits and their gradient (a million rows and 1,000
    classes would otherwise need 4 GB for each), and a chunk's features are read from memory
    once per pass: the gradient's product finds them still in the cache. `rows` picks the
    split's rows out of `features` chunk by chunk (a sample is never copied whole). With few
    classes (below KEEP_CLASSES) a sample of at most KEPT_BYTES is gathered once; otherwise a
    chunk at a time on every pass, whose copy costs about 1/C of the pass's products, so the
    process never holds the features twice."""

    def __init__(self, features: np.ndarray, targets: np.ndarray, num_classes: int,
                 statistics: Standardization, options: SolverOptions,
                 rows: Optional[np.ndarray] = None) -> None:
        self.statistics, self.objective = statistics, options.objective
        self.label_smoothing = options.label_smoothing
        self.features = np.asarray(features, np.float32)  # a copy only if not float32 already
        self.targets = targets if self.objective.multi_label else np.asarray(targets, np.int64)
        self.count = len(features) if rows is None else len(rows)
        row_bytes = max(1, self.features[:1].nbytes)
        if rows is not None and num_classes < KEEP_CLASSES and self.count * row_bytes <= (
                KEPT_BYTES):
            self.features, self.targets, rows = self.features[rows], self.targets[rows], None
        self.rows = rows  # None: every row, in order
        self.step = chunk_rows(num_classes, row_bytes)

    def _chunks(self, starts: Sequence[int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(float32 features, targets) of the chunks of rows beginning at `starts`."""
        for start in starts:
            chosen = (slice(start, start + self.step) if self.rows is None
                      else self.rows[start:start + self.step])
            yield self.features[chosen], self.targets[chosen]

    def loss_and_gradient(self, params: np.ndarray, l2: float,
                          pool: Optional[ThreadPoolExecutor] = None, workers: int = 1
                          ) -> tuple[float, np.ndarray]:
        """The mean loss + l2 x |standardized weights|^2, and its float64 gradient in `params`.

        Products in float32, sums over chunks in float64. With a `pool`, up to `workers` consecutive
        shares of the chunks are summed in parallel (each on one BLAS thread: on 2 cores 1.4x
        faster than both cores on each product, 56k x 1280 x 10), then added in order, so the
        result depends on `workers`, never on timing."""
        standard, _ = _split(params, self.statistics)
        weights, biases = self.statistics.layer(params)
        starts = np.arange(0, self.count, self.step)
        shares = [share.tolist() for share in np.array_split(starts, min(workers, len(starts)))]
        parts = (pool.map if pool is not None else map)(
            lambda share: self._part(share, weights, biases), shares)
        loss, raw_gradient, bias_gradient = 0.0, np.zeros(weights.shape[::-1]), np.zeros(
            len(biases))
        for part_loss, part_raw, part_bias in parts:
            loss += part_loss
            raw_gradient += part_raw
            bias_gradient += part_bias
        raw_gradient /= self.count
        bias_gradient /= self.count
        # The chain rule through the folding (Standardization.layer): weights = W / scale,
        # biases = b - mean @ weights.
        # Written into one array, in place: at 1,000 classes each [D, C] temporary is 10 MB.
        statistics = self.statistics
        gradient = np.empty(len(params))
        weight_gradient = gradient[:standard.size].reshape(standard.shape)
        weight_gradient[...] = raw_gradient.T
        weight_gradient -= np.multiply.outer(statistics.mean.astype(np.float64), bias_gradient)
        weight_gradient /= statistics.scale.astype(np.float64)[:, np.newaxis]
        weight_gradient += (2 * l2) * standard
        gradient[standard.size:] = bias_gradient
        flat = params[:standard.size]
        return loss / self.count + l2 * float(flat @ flat), gradient

    def _part(self, starts: Sequence[int], weights: np.ndarray, biases: np.ndarray
              ) -> tuple[float, np.ndarray, np.ndarray]:
        """The chunks' summed loss, features^T @ logit gradient (float64 [C, D]) and summed
        logit gradient (float64 [C])."""
        loss, raw_gradient = 0.0, np.zeros(weights.shape[::-1])
        bias_gradient = np.zeros(len(biases))
        for features, targets in self._chunks(starts):
            logits = features @ weights
            logits += biases
            part, logit_gradient = self.objective.loss_and_gradient(targets, logits,
                                                                    self.label_smoothing)
            loss += part
            raw_gradient += logit_gradient.T @ features  # the chunk is still in the cache
            bias_gradient += logit_gradient.sum(axis=0, dtype=np.float64)
        return loss, raw_gradient, bias_gradient

    def metrics(self, params: np.ndarray) -> tuple[float, float]:
        """(accuracy, cross entropy) of the split."""
        weights, biases = self.statistics.layer(params)
        hits = loss = 0.0
        for features, targets in self._chunks(range(0, self.count, self.step)):
            logits = features @ weights
            logits += biases
            hits += self.objective.hits(targets, logits)
            loss += self.objective.loss_and_gradient(targets, logits)[0]
        return hits / self.count, loss / self.count


@dataclasses.dataclass(frozen=True)
class Standardization:
    """The training features' mean and spread (float32 [D] each): what the penalty is measured
    against. Every feature whose spread is above _MIN_SCALE is scaled by at least
    MIN_RELATIVE_SCALE x the median feature's spread; the others are only centred."""

    mean: np.ndarray
    scale: np.ndarray
    correlation: Optional[np.ndarray] = None  # float64 [D, D] of the standardized features

    @classmethod
    def of(cls, features: np.ndarray, correlation: bool = False) -> "Standardization":
        """The statistics of float [N, D] `features` (N >= 1), summed in float64 a chunk of
        rows at a time (no float64 copy of the features); with `correlation`, also the
        standardized features' correlation (for large fits, `solve`)."""
        count, dims = features.shape
        step = max(1, CHUNK_BYTES // max(1, 8 * dims))
        chunks = [slice(start, start + step) for start in range(0, count, step)]
        mean = sum((features[rows].sum(axis=0, dtype=np.float64) for rows in chunks),
                   np.zeros(dims)) / max(count, 1)
        variance = sum((np.square(features[rows] - mean).sum(axis=0) for rows in chunks),
                       np.zeros(dims)) / max(count, 1)
        scale = np.sqrt(variance)
        floor = MIN_RELATIVE_SCALE * np.sort(scale)[dims // 2] if dims else 0.0
        scale = np.where(scale > _MIN_SCALE, np.maximum(scale, floor), 1.0)
        shape = None
        if correlation:
            rows = np.linspace(0, count - 1, min(count, CORRELATION_ROWS)).astype(np.int64)
            standard = ((features[rows] - mean) / scale).astype(np.float32)
            shape = (standard.T @ standard).astype(np.float64) / max(len(rows), 1)
        return cls(mean.astype(np.float32), scale.astype(np.float32), shape)

    def layer(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Parameters [D * C + C] of the layer on standardized features -> (float32 [D, C]
        weights, [C] biases) of the same layer on raw features."""
        standard, biases = _split(params, self)
        weights = standard / self.scale.astype(np.float64)[:, np.newaxis]
        return (weights.astype(np.float32),
                (biases - self.mean.astype(np.float64) @ weights).astype(np.float32))


def _split(params: np.ndarray, statistics: Standardization) -> tuple[np.ndarray, np.ndarray]:
    """float64 parameters -> (standardized weights [D, C], biases [C]), views."""
    dims = len(statistics.mean)
    classes = len(params) // (dims + 1)
    return params[:dims * classes].reshape(dims, classes), params[dims * classes:]


@dataclasses.dataclass(frozen=True)
class LayerFit:
    """One fit of the layer at one penalty.

    Attributes:
        weights: float32 [D, C] on the features as given.
        biases: float32 [C].
        state: float64 [(D + 1) * C] its parameters on the standardized features: the `start`
            of a warm-started fit at another penalty.
        iterations: L-BFGS iterations run.
    """

    weights: np.ndarray
    biases: np.ndarray
    state: np.ndarray
    iterations: int


def fit_layer(features: np.ndarray, targets: np.ndarray, num_classes: int, l2: float,
              start: Optional[np.ndarray] = None, statistics: Optional[Standardization] = None,
              options: SolverOptions = SolverOptions()) -> LayerFit:
    """The layer minimising the objective's mean loss + l2 x |standardized weights|^2 on every
    row, for callers that choose their own penalty (the head's path: training/convex.py).

    Args:
        features: float32 [N, D], N >= 1.
        targets: the objective's targets of those rows (int64 [N] or float32 [N, C]).
        num_classes: C.
        l2: the penalty.
        start: a previous fit's `state` (same statistics) to start from; None: zeros.
        statistics: the standardization; None: the features' own.
        options: the objective and the iteration limits.
    """
    statistics = statistics or Standardization.of(features)
    problem = Problem(features, targets, num_classes, statistics, options)
    if start is None:
        start = np.zeros((len(statistics.mean) + 1) * num_classes)
    state, iterations = solve(problem, start, l2, options)
    return LayerFit(*statistics.layer(state), state, iterations)


def chunk_rows(num_classes: int, row_bytes: int) -> int:
    """Rows of a chunk: at most CHUNK_VALUES logits and CHUNK_BYTES of features."""
    return max(1, min(CHUNK_VALUES // max(1, num_classes), CHUNK_BYTES // max(1, row_bytes)))


def solve(problem: Problem, start: np.ndarray, l2: float,
          options: SolverOptions) -> tuple[np.ndarray, int]:
    """L-BFGS from `start` at penalty `l2`: (float64 parameters, iterations run).

    The loss is summed by as many threads as the caller allows BLAS (the audit calls this under
    one), each running its products on one BLAS thread; L-BFGS's own vector operations run on
    one too, which is fastest for them. A loss of one chunk (or one thread) is summed on the
    calling thread: handing each evaluation to a pool thread and waiting for it cost more than
    the evaluation itself on a busy 2-core host (the audit's 1k label model: ~500 evaluations).
    L-BFGS steps in `_Coordinates` (same minimum)."""
    blas = _blas()
    workers = max((pool["num_threads"] for pool in blas.info()), default=1)
    threads = min(workers, len(range(0, problem.count, problem.step)))  # shares summed at once
    with blas.limit(limits=1, user_api="blas"), (
            ThreadPoolExecutor(threads, thread_name_prefix="solver") if threads > 1
            else contextlib.nullcontext()) as pool:
        # Factored on one thread too: on a busy 2-core host OpenBLAS's two-thread Cholesky of
        # 1,280 x 1,280 took 3.2 s instead of 0.09 s.
        coordinates = _Coordinates(problem.statistics, len(start), l2, problem.count)

        def loss_and_gradient(free: np.ndarray) -> tuple[float, np.ndarray]:
            loss, gradient = problem.loss_and_gradient(coordinates.params(free), l2, pool,
                                                       workers)
            return loss, coordinates.gradient(gradient)

        solution = minimize(loss_and_gradient, coordinates.free(start), options.max_iterations,
                            options.tolerance)
    return coordinates.params(solution.x), solution.iterations


class _Coordinates:
    """The parameters L-BFGS moves: standardized weights W = L^-T Q (L the Cholesky factor of
    the features' correlation + RIDGE x classes x l2), biases as they are. Below SHAPED_VALUES
    rows x classes, without a correlation, or if it cannot be factored: the parameters.

    Each change of coordinates is one BLAS triangular product or solve written in place into a
    new vector: W [D, C] in C order is W^T in Fortran order, so W^T = Q^T L^-1 needs no copy
    (at 1,000 classes scipy's solve_triangular copied each 10 MB operand and its result twice,
    which cost as much as the solve itself)."""

    def __init__(self, statistics: Standardization, size: int, l2: float, rows: int) -> None:
        self.dims = len(statistics.mean)
        self.classes = size // (self.dims + 1)
        self.factor: Optional[np.ndarray] = None
        if statistics.correlation is not None and rows * self.classes >= SHAPED_VALUES:
            ridge = max(RIDGE * self.classes * l2, 1e-6)
            try:
                self.factor = np.asfortranarray(cholesky(
                    statistics.correlation + ridge * np.eye(self.dims), lower=True,
                    check_finite=False))
            except LinAlgError:
                self.factor = None

    def _apply(self, vector: np.ndarray, product: str, transposed: bool) -> np.ndarray:
        """A copy of `vector` whose weights W became (W^T op(L)^-1 for "trsm", W^T op(L) for
        "trmm") transposed back, op = transpose if `transposed`."""
        assert self.factor is not None
        result = np.array(vector, dtype=np.float64)
        weights_t = result[:self.dims * self.classes].reshape(self.dims, self.classes).T
        routine = get_blas_funcs(product, (self.factor,))
        done = routine(1.0, self.factor, weights_t, side=1, lower=1, trans_a=int(transposed),
                       overwrite_b=1)
        if not np.shares_memory(done, weights_t):
            weights_t[...] = done
        return result

    def free(self, params: np.ndarray) -> np.ndarray:
        """Q = L^T W, i.e. Q^T = W^T L."""
        return params if self.factor is None else self._apply(params, "trmm", False)

    def params(self, free: np.ndarray) -> np.ndarray:
        """W = L^-T Q, i.e. W^T = Q^T L^-1."""
        return free if self.factor is None else self._apply(free, "trsm", False)

    def gradient(self, gradient: np.ndarray) -> np.ndarray:
        """The loss's gradient in the parameters -> in the free coordinates: L^-1 g, i.e.
        (g^T L^-T)^T."""
        return gradient if self.factor is None else self._apply(gradient, "trsm", True)


@functools.lru_cache(maxsize=None)
def _blas() -> ThreadpoolController:
    """The process's BLAS thread pools (found once: the search walks the loaded libraries)."""
    return ThreadpoolController()
