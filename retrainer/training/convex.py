"""Head training by a full-batch convex fit, its L2 strength chosen on the validation split.

The reference protocol for frozen features (a logistic regression whose L2 penalty is tuned on
held-out data, Kornblith et al. 2019): the loss is convex in the layer's weights, so L-BFGS on the
whole training split finds its minimum for each penalty. Penalties are tried from strong to weak,
each fit starting from the previous one's weights (a warm start: each costs a few dozen
iterations), and the one with the best validation accuracy (ties: lower validation cross entropy)
is kept. The path stops once `patience` penalties in a row have not beaten the best. Only the
training and validation splits are read here; the test split is never seen.

The losses and gradients are numpy: float32 products on every core the caller allows (BLAS),
float64 sums; L-BFGS (training/_lbfgs.py) steers the parameters. No TensorFlow: a warm rerun
need not import it, and the audit's label model fits with the same solver (`fit_layer`).
Features are centred and scaled by the training split's own statistics inside the fit
(`Standardization`: no scale below a tenth of the median feature's, so that no exported weight
dwarfs the others and int8 exports keep the layer), and that is folded back into the returned
weights, so one path of penalties suits every extractor and the exported layer is the usual
`features @ W + b`. On large splits the path runs on a sample of rows and only the chosen
penalty is fitted on all of them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Optional

import numpy as np

from retrainer.training.objectives import SOFTMAX, Objective
from retrainer.training.solver import (
    SHAPED_VALUES,
    Problem,
    SolverOptions,
    Standardization,
    solve,
)

log = logging.getLogger(__name__)

# Strong to weak, in half decades: the penalty on the standardized weights, added to the mean loss.
DEFAULT_L2_PATH = tuple(float(f"{10 ** (-exponent / 2):.0e}") for exponent in range(2, 14))
NO_VALIDATION_L2 = 1e-2  # chosen most often on 1k-image sets, where splits come out empty


@dataclasses.dataclass(frozen=True)
class ConvexConfig:
    """How to fit the head (the path, and how long each point of it may take).

    Attributes:
        l2_path: penalties to try, strongest first; one value = a fixed penalty, no choice.
        max_iterations: L-BFGS iterations per penalty.
        patience: penalties in a row without a better validation score before the path stops.
        label_smoothing: targets smoothed towards uniform (0 = off).
        objective: softmax (one label per image) or sigmoid (several).
        tolerance: relative change of the loss below which the kept fit counts as converged.
        path_tolerance: the same for the path's fits on a sample, which only choose the penalty
            (the fit on every row then starts from the chosen one and runs to `tolerance`).
        path_rows: above this many training rows, the path runs on a sample of this many.
        validation_values: the path scores its penalties on a seeded sample of at most
            validation_values // classes validation rows; the kept fit is scored on all.
        fit_values: above this many training rows x classes, the final fit runs on a sample of
            fit_values // classes rows (each of its iterations costs rows x classes x D).
    """

    l2_path: tuple[float, ...] = DEFAULT_L2_PATH
    max_iterations: int = SolverOptions.max_iterations
    patience: int = 2
    label_smoothing: float = 0.0
    objective: Objective = SOFTMAX
    tolerance: float = SolverOptions.tolerance
    path_tolerance: float = 1e-4
    path_rows: int = 8192
    fit_values: int = 2**26
    validation_values: int = 2**24

    @property
    def solver(self) -> SolverOptions:
        """What each fit of the path minimises, and for how long."""
        return SolverOptions(self.objective, self.label_smoothing, self.max_iterations,
                             self.tolerance)


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


def fit_head(train_features: np.ndarray, train_targets: np.ndarray,
             validation_features: np.ndarray, validation_targets: np.ndarray,
             num_classes: int, config: ConvexConfig = ConvexConfig()) -> ConvexFit:
    """Fit the layer on the training split for each penalty; keep the best on validation.

    Above `config.path_rows` training rows, the path runs on a seeded sample of that many rows
    (each fit there costs a fraction of a full one), each fit stopping at the looser
    `config.path_tolerance` (it only has to rank the penalties: on 70,000 FM vectors the same
    choice in 104 evaluations instead of 167; at 1,000 classes validation accuracy within
    0.05 points); above validation_values // classes validation rows it is scored on a seeded
    sample of them. The sample's best penalty, rescaled to the
    whole split (penalty x sample / rows: the same prior against more data), is then fitted on
    every row, starting from the sample's weights at the penalty nearest that; that final fit is
    the last point of the path, scored on every validation row.
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
    rows, rng = len(train_features), np.random.default_rng(0)
    order = rng.permutation(rows)  # the samples are its first rows
    sample, final = (np.sort(order[:limit]) for limit in (
        config.path_rows, max(config.path_rows, config.fit_values // max(num_classes, 1))))
    sampled = len(sample) < rows
    # The sample's statistics standardize every fit: the same penalty means the same prior.
    statistics = Standardization.of(train_features[sample], correlation=(
        len(final) * num_classes >= SHAPED_VALUES))
    terms = (num_classes, statistics, config.solver)
    train = Problem(train_features, train_targets, *terms, sample if sampled else None)
    validation = scoring = None
    path = config.l2_path
    if len(validation_features):
        validation = scoring = Problem(validation_features, validation_targets, *terms)
        limit = max(1, config.validation_values // max(num_classes, 1))
        if len(validation_features) > limit:
            scored = np.sort(rng.permutation(len(validation_features))[:limit])
            scoring = Problem(validation_features, validation_targets, *terms, scored)
    elif len(path) > 1:
        path = (NO_VALIDATION_L2,)
        log.warning("No validation images: the L2 strength cannot be chosen; using %g.", path[0])
    walk = _Path(train, scoring, num_classes, config)
    for l2 in path:
        walk.fit(l2, config.path_tolerance if sampled else config.tolerance)
        if walk.since_best >= config.patience:
            break
    best, walk.validation = walk.best, validation
    if sampled:
        chosen = walk.points[best].l2 * len(sample) / len(final)
        # Starting from the sample's fit at the penalty nearest the final one (in ratio), not at
        # the best one: its weights' size is nearer the final fit's (70,000 FM vectors: 43
        # iterations instead of 49, the same optimum).
        walk.state = walk.states[min(range(len(walk.points)), key=lambda index: abs(
            np.log(walk.points[index].l2 / chosen)))]
        walk.train = Problem(train_features, train_targets, *terms,
                             final if len(final) < rows else None)
        walk.fit(chosen, config.tolerance)
        best = len(walk.points) - 1
    elif scoring is not validation:
        walk.rescore(best)
    weights, biases = statistics.layer(walk.states[best])
    accuracy = walk.points[best].validation_accuracy
    log.info("Chose L2 strength %g (validation accuracy %s).", walk.points[best].l2,
             "n/a" if accuracy is None else f"{accuracy * 100:.1f}%")
    return ConvexFit(weights, biases, walk.points[best].l2, tuple(walk.points), best)


class _Path:
    """Fits along the penalties, each warm-started from the last, scored on validation."""

    def __init__(self, train: Problem, validation: Optional[Problem], num_classes: int,
                 config: ConvexConfig) -> None:
        self.train, self.validation, self.config = train, validation, config
        self.state = np.zeros((len(train.statistics.mean) + 1) * num_classes)
        self.states: list[np.ndarray] = []
        self.points: list[PathPoint] = []
        self.best, self.since_best = 0, 0

    def fit(self, l2: float, tolerance: float) -> None:
        started = time.perf_counter()
        options = dataclasses.replace(self.config.solver, tolerance=tolerance)
        self.state, iterations = solve(self.train, self.state, l2, options)
        self.states.append(self.state)
        train_accuracy, train_loss = self.train.metrics(self.state)
        validation_accuracy = validation_loss = None
        if self.validation is not None:
            validation_accuracy, validation_loss = self.validation.metrics(self.state)
        self.points.append(PathPoint(l2, iterations, train_accuracy, train_loss,
                                     validation_accuracy, validation_loss,
                                     time.perf_counter() - started))
        _log_point(self.points[-1])
        if self.validation is not None and len(self.points) > 1:
            if _score(self.points[-1]) > _score(self.points[self.best]):
                self.best, self.since_best = len(self.points) - 1, 0
            else:
                self.since_best += 1


    def rescore(self, index: int) -> None:
        """Point `index` scored again on the whole validation split."""
        assert self.validation is not None
        accuracy, loss = self.validation.metrics(self.states[index])
        self.points[index] = dataclasses.replace(self.points[index], validation_accuracy=accuracy,
                                                 validation_cross_entropy=loss)


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
