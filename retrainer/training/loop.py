"""The one training loop: head training (retrain.py's SGD steps) and fine-tuning (epochs) run it.

A job trains its variables up to a step and measures them there (`Job.advance`); the loop walks
the job's schedule of measured steps, keeps the history, logs, calls the caller's hooks and, when
asked, stops early: once the validation cross-entropy has not improved for `patience`
measurements in a row, the weights of the best measurement are put back (Keras'
`EarlyStopping(restore_best_weights=True)`, over any variables, not only a Keras model's). Only
validation metrics steer it: the test split is never seen here.

Keras `Model.fit` was measured as this loop's alternative (docs/training.md, benchmarks/
bench_head.py): it measures per epoch rather than at retrain.py's steps, averages the training
metrics over the epoch instead of reporting the step's batch, restores only Keras weights (not a
fine-tuned extractor's), and its per-epoch overhead made retrain.py's 400 evaluations cost
several seconds. The optimizer is Keras' SGD.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, Iterator, Optional, Protocol, Sequence

import keras
import numpy as np
import tensorflow as tf

from retrainer.training.head_types import EvalPoint

log = logging.getLogger(__name__)

_CHUNK_SECONDS = 0.5


class Job(Protocol):
    """What the loop trains."""

    @property
    def variables(self) -> Sequence[tf.Variable]:
        """The variables being trained (what early stopping keeps and restores)."""

    def advance(self, steps: Sequence[int]) -> list[EvalPoint]:
        """Train through each of `steps` (ascending, from where the last call stopped), measuring
        after each; one call may run them all in one traced function."""


@dataclasses.dataclass(frozen=True)
class LoopResult:
    """The measurements up to where training stopped, and the step whose weights were kept by
    early stopping (None without it)."""

    history: tuple[EvalPoint, ...]
    best_step: Optional[int]
    seconds: float


def sgd(learning_rate: float, momentum: float = 0.0) -> keras.optimizers.Optimizer:
    """Plain SGD (retrain.py), or with momentum (TensorFlow's MomentumOptimizer update)."""
    return keras.optimizers.SGD(learning_rate, momentum=momentum)


def run_loop(job: Job, schedule: Sequence[int], patience: int = 0, has_validation: bool = True,
             on_measured: Optional[Callable[[EvalPoint], None]] = None) -> LoopResult:
    """Advance `job` to each step of `schedule`, measuring there; stop early if asked.

    Args:
        job: what to train.
        schedule: the steps to measure at, ascending.
        patience: measurements in a row without a lower validation cross-entropy before
            stopping; 0 = never stop early.
        has_validation: False turns early stopping off (with a warning when it was asked for).
        on_measured: called with each measurement, after it is logged.

    Returns:
        LoopResult; with early stopping the job's variables hold the best measurement's weights.
    """
    started = time.perf_counter()
    if patience and not has_validation:
        log.warning("No validation images: early stopping is off.")
    patience = patience if has_validation else 0
    history: list[EvalPoint] = []
    best: Optional[tuple[float, int, list[np.ndarray]]] = None
    since_best = 0
    for steps in _chunks(list(schedule), one_at_a_time=bool(patience)):
        history += job.advance(steps)
        if on_measured is not None:
            for point in history[-len(steps):]:
                on_measured(point)
        if not patience:
            continue
        loss, step = history[-1].validation_cross_entropy, history[-1].step
        assert loss is not None  # patience is 0 without validation images
        if best is None or loss < best[0]:
            best, since_best = (loss, step, [variable.numpy() for variable in job.variables]), 0
            continue
        since_best += 1
        if since_best >= patience:
            log.info("Early stopping at %d: validation cross entropy has not improved for %d "
                     "measurements; keeping %d (%.6f).", step, patience, best[1], best[0])
            break
    if best is not None:
        for variable, value in zip(job.variables, best[2]):
            variable.assign(value)
    return LoopResult(tuple(history), None if best is None else best[1],
                      time.perf_counter() - started)


def _chunks(schedule: list[int], one_at_a_time: bool) -> Iterator[list[int]]:
    """The schedule in runs for one `advance` call each: one step at a time when each measurement
    decides whether to go on (early stopping), else runs that double while a call takes under
    half a second (little call overhead on fast steps, live logs on slow ones)."""
    index, span = 0, 1
    while index < len(schedule):
        stop = index + 1 if one_at_a_time else min(index + span, len(schedule))
        started = time.perf_counter()
        yield schedule[index:stop]
        if time.perf_counter() - started < _CHUNK_SECONDS:
            span *= 2
        index = stop
