"""Head training stage: a new final layer (dense D -> C) fitted to bottleneck vectors.

Two solvers (docs/training.md):
- "lbfgs", the default: the full-batch convex fit whose L2 strength is chosen on the validation
  split (training/convex.py);
- "sgd": retrain.py's loop -- plain SGD on random class-balanced batches, measured every
  `eval_step_interval` steps and at the last one -- run by the one training loop
  (training/loop.py), the steps between two measurements inside one tf.function call.
Takes arrays of features, never cache paths, so later stages (distortions, fine-tuning) can feed
freshly computed features instead. The layer's outputs are softmax probabilities, or sigmoid ones
for a multi-label objective (training/objectives.py).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from retrainer.io.storage import AnyPath, as_path
from retrainer.training import objective_ops
from retrainer.training._sampling import (
    DROPOUT_STREAM,
    INIT_STREAM,
    TRAIN_STREAM,
    VALIDATION_STREAM,
    BalancedSampler,
    stream_seed,
)
from retrainer.training.convex import ConvexConfig, PathPoint, fit_head
from retrainer.training.loop import EvalPoint, run_loop, sgd
from retrainer.training.objectives import SOFTMAX, Objective
from retrainer.training.regularization import Regularization
from retrainer.training.summaries import fresh_writer, write_path_summaries, write_scalars

log = logging.getLogger(__name__)

INIT_STDDEV = 0.001  # retrain.py's truncated-normal initialisation of the new layer
UNROLLED = 8  # SGD steps per iteration of the traced loop
SOLVERS = ("lbfgs", "sgd")


@dataclasses.dataclass(frozen=True)
class FeatureSet:
    """One split's features and integer labels.

    Attributes:
        features: float32 [N, D] bottleneck vectors.
        labels: int64 [N] class indices (multi-label: each image's first; batches balance it).
        targets: float32 [N, C] 0/1 rows of a multi-label split, None for single-label.
    """

    features: np.ndarray
    labels: np.ndarray
    targets: Optional[np.ndarray] = None

    @property
    def objective_targets(self) -> np.ndarray:
        """What the loss compares with: `targets` when set, else `labels`."""
        return self.labels if self.targets is None else self.targets

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """How to train the head (retrain.py's flags for SGD; -1 batch size = the whole split)."""

    steps: int
    learning_rate: float
    train_batch_size: int
    validation_batch_size: int
    eval_step_interval: int
    seed: int
    summaries_dir: Optional[AnyPath] = None
    checkpoint_path: Optional[AnyPath] = None
    regularization: Regularization = Regularization()
    early_stopping_patience: int = 0  # evaluations without improvement; 0 = no early stopping
    solver: str = "sgd"
    convex: ConvexConfig = ConvexConfig()
    objective: Objective = SOFTMAX

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {list(SOLVERS)}. Received: {self.solver!r}")


@dataclasses.dataclass(frozen=True)
class TrainingResult:
    """The head and how it was trained.

    Attributes:
        head: the trained layer.
        history: the measurements (SGD: per evaluation step, up to where training stopped;
            lbfgs: per penalty of the path, `step` counting L-BFGS iterations).
        seconds: wall time.
        best_step: the SGD step early stopping kept (None without it).
        path: the lbfgs penalties tried (empty for SGD); `chosen` indexes the kept one.
    """

    head: "Head"
    history: tuple[EvalPoint, ...]
    seconds: float
    best_step: Optional[int] = None
    path: tuple[PathPoint, ...] = ()
    chosen: Optional[int] = None

    def summary(self) -> dict[str, Any]:
        """The `--json` "head" object: the solver, and for lbfgs the chosen penalty and path."""
        if self.chosen is None:
            return {"solver": "sgd"}
        return {"solver": "lbfgs", "l2": self.path[self.chosen].l2,
                "path": [dataclasses.asdict(point) for point in self.path]}

    @property
    def final(self) -> EvalPoint:
        """The measurement of the weights that were kept."""
        if self.chosen is not None:
            return self.history[self.chosen]
        if self.best_step is not None:
            return next(point for point in self.history if point.step == self.best_step)
        return self.history[-1]


class Head(tf.Module):
    """The new final layer: logits = features @ weights + biases, then the objective's
    probabilities (softmax, or sigmoid for multi-label)."""

    def __init__(self, vector_size: int, num_classes: int, seed: int,
                 objective: Objective = SOFTMAX) -> None:
        super().__init__(name="final_retrain_ops")
        initial = tf.random.stateless_truncated_normal(
            [vector_size, num_classes], stream_seed(seed, INIT_STREAM), stddev=INIT_STDDEV
        )
        self.weights = tf.Variable(initial, name="final_weights")
        self.biases = tf.Variable(tf.zeros([num_classes]), name="final_biases")
        self.objective = objective

    def __call__(self, features: tf.Tensor) -> tf.Tensor:
        """float32 [N, D] features -> float32 [N, C] logits."""
        return tf.matmul(features, self.weights) + self.biases

    def probabilities(self, features: tf.Tensor) -> tf.Tensor:
        """float32 [N, D] features -> float32 [N, C] probabilities."""
        return objective_ops.probabilities(self.objective, self(features))


class _Split:
    """One split on the device, with its batch sampler."""

    def __init__(self, data: FeatureSet, batch_size: int, seed: tf.Tensor) -> None:
        self.sampler = BalancedSampler(data.labels, batch_size)
        self.seed = seed
        self.features = tf.constant(data.features, tf.float32)
        self.labels = tf.constant(data.objective_targets,
                                  tf.int64 if data.targets is None else tf.float32)

    def batches(self, steps: tf.Tensor) -> tf.Tensor:
        """int64 [S, B]: the indices of each step's batch (drawn together, before the steps)."""
        return self.sampler.sample_steps(self.seed, steps)

    def rows(self, indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.gather(self.features, indices), tf.gather(self.labels, indices)


class _SgdSteps:
    """retrain.py's steps as a job of the training loop, with summaries and intermediate stores.

    Measured as retrain.py did, after the step's update: the training metrics on that step's
    batch, validation on a sampled validation batch. Each call draws the batches of all its steps
    first, then runs the steps and measurements in one traced loop.
    """

    def __init__(self, head: Head, train: FeatureSet, validation: FeatureSet,
                 config: TrainingConfig, on_store: Optional[Callable[[int, Head], None]],
                 store_every: int) -> None:
        self.head = head
        self.config = config
        self.optimizer = sgd(config.learning_rate, config.regularization.momentum)
        self.dropout_seed = stream_seed(config.seed, DROPOUT_STREAM)
        self.train = _Split(train, config.train_batch_size, stream_seed(config.seed, TRAIN_STREAM))
        self.validation = None
        if len(validation):
            seed = stream_seed(config.seed, VALIDATION_STREAM)
            self.validation = _Split(validation, config.validation_batch_size, seed)
        self.writers = {}
        if config.summaries_dir is not None:
            self.writers = {name: fresh_writer(as_path(config.summaries_dir) / name)
                            for name in ("train", "validation")}
        self.on_store = on_store or (lambda step, head: None)  # `stores` is empty without it
        self.stores = (range(store_every, config.steps, store_every)
                       if store_every > 0 and on_store is not None else range(0))
        self.next_step = 0
        step = tf.TensorSpec([], tf.int64)
        self._train = tf.function(self._steps, input_signature=[step, step])
        self._train_and_measure = tf.function(
            self._steps_and_measure, input_signature=[step, tf.TensorSpec([None], tf.int64)])

    @property
    def variables(self) -> tuple[tf.Variable, ...]:
        return tuple(self.head.trainable_variables)

    def advance(self, steps: Sequence[int]) -> list[EvalPoint]:
        """SGD steps through each of `steps`, measuring after each (one traced call per run of
        steps between intermediate stores)."""
        points: list[EvalPoint] = []
        ends = list(steps)
        while ends:
            store = next((s for s in self.stores if self.next_step <= s <= ends[-1]), None)
            if store is not None and store not in ends:  # a store between two measurements
                self._train(tf.constant(self.next_step, tf.int64), tf.constant(store, tf.int64))
                self.next_step = store + 1
                self.on_store(store, self.head)
                continue
            run = ends if store is None else ends[:ends.index(store) + 1]
            rows = self._train_and_measure(tf.constant(self.next_step, tf.int64),
                                           tf.constant(run, tf.int64))
            self.next_step = run[-1] + 1
            points += [_log_point(step, *row) for step, row in zip(run, rows.numpy().tolist())]
            if store is not None:
                self.on_store(store, self.head)
            ends = ends[len(run):]
        return points

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()

    def _steps(self, first: tf.Tensor, last: tf.Tensor) -> tf.Tensor:
        self._run(first, last, first, self.train.batches(tf.range(first, last + 1)))
        return last

    def _run(self, first: tf.Tensor, last: tf.Tensor, drawn_from: tf.Tensor,
             batches: tf.Tensor) -> None:
        """SGD steps `first`..`last`; batches[i] holds the batch of step drawn_from + i.

        The loop runs UNROLLED steps per iteration (then the remainder one by one): a traced
        loop's own bookkeeping costs about as much as a step of a 1280 x 10 layer.
        """
        count = last - first + 1
        for group in tf.range(count // UNROLLED):
            for offset in range(UNROLLED):
                self._step(first + group * UNROLLED + offset, drawn_from, batches)
        for step in tf.range(first + count // UNROLLED * UNROLLED, last + 1):
            self._step(step, drawn_from, batches)

    def _step(self, step: tf.Tensor, drawn_from: tf.Tensor, batches: tf.Tensor) -> None:
        regularization = self.config.regularization
        features, labels = self.train.rows(batches[step - drawn_from])
        if regularization.dropout_rate:
            features = regularization.dropout(
                features, tf.random.experimental.stateless_fold_in(self.dropout_seed, step))
        with tf.GradientTape() as tape:
            loss = regularization.loss(labels, self.head(features), self.head.weights,
                                       self.head.objective)
        gradients = tape.gradient(loss, self.head.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.head.trainable_variables))

    def _steps_and_measure(self, first: tf.Tensor, ends: tf.Tensor) -> tf.Tensor:
        """Steps from `first` through ends[-1], measuring after each step of `ends`.

        Returns:
            float32 [len(ends), 5]: per end step, train accuracy and cross entropy on its batch,
            validation accuracy, count and cross entropy on a sampled batch (-1, 0, -1 without
            validation data).
        """
        batches = self.train.batches(tf.range(first, ends[-1] + 1))
        validation_batches = None
        if self.validation is not None:
            validation_batches = self.validation.batches(ends)
        rows = tf.TensorArray(tf.float32, size=tf.size(ends), element_shape=[5])
        start = first
        for index in tf.range(tf.size(ends)):
            last = ends[index]
            self._run(start, last, first, batches)
            rows = rows.write(index, self._measure(
                last, batches[last - first],
                None if validation_batches is None else validation_batches[index]))
            start = last + 1
        return rows.stack()

    def _measure(self, last: tf.Tensor, batch: tf.Tensor,
                 validation_batch: Optional[tf.Tensor]) -> tf.Tensor:
        """float32 [5] at step `last` (after its update), with summaries."""
        objective = self.head.objective
        features, labels = self.train.rows(batch)
        logits = self.head(features)
        train_accuracy = objective_ops.accuracy(objective, labels, logits)
        train_loss = objective_ops.loss(objective, labels, logits)
        validation_accuracy, validation_count = tf.constant(-1.0), tf.constant(0.0)
        validation_loss = tf.constant(-1.0)
        if self.validation is not None and validation_batch is not None:
            features, labels = self.validation.rows(validation_batch)
            logits = self.head(features)
            validation_accuracy = objective_ops.accuracy(objective, labels, logits)
            validation_loss = objective_ops.loss(objective, labels, logits)
            validation_count = tf.cast(tf.shape(labels)[0], tf.float32)
        if self.writers:
            write_scalars(self.writers["train"], last, train_accuracy, train_loss,
                          [("final_weights", self.head.weights), ("final_biases", self.head.biases)])
            if self.validation is not None:
                write_scalars(self.writers["validation"], last, validation_accuracy,
                              validation_loss)
        return tf.stack([train_accuracy, train_loss, validation_accuracy, validation_count,
                         validation_loss])


def train_head(
    train: FeatureSet,
    validation: FeatureSet,
    num_classes: int,
    config: TrainingConfig,
    on_store: Optional[Callable[[int, Head], None]] = None,
    store_every: int = 0,
) -> TrainingResult:
    """Train a new final layer on bottleneck vectors.

    Args:
        train: the training split; at least one example.
        validation: the validation split; may be empty (validation is then skipped).
        num_classes: C, the number of output classes (classes may lack training examples).
        config: the solver and its settings, the seed and where to write summaries/checkpoint.
        on_store: SGD only: called as on_store(step, head) every `store_every` steps (step > 0),
            e.g. to export intermediate graphs.
        store_every: 0 = never call `on_store`.

    Returns:
        The trained head, its measurements, the time taken, and with early stopping the step
        whose weights were kept (lbfgs: the penalty path and the chosen point).
    """
    started = time.perf_counter()
    head = Head(train.features.shape[1], num_classes, config.seed, config.objective)
    if not len(validation):
        log.warning("No validation images: skipping validation during training.")
    if config.solver == "lbfgs":
        result = _train_convex(head, train, validation, num_classes, config)
    else:
        job = _SgdSteps(head, train, validation, config, on_store, store_every)
        schedule = sorted(set(range(0, config.steps, config.eval_step_interval))
                          | {config.steps - 1})
        try:
            loop = run_loop(job, schedule, config.early_stopping_patience, bool(len(validation)))
        finally:
            job.close()
        result = TrainingResult(head, loop.history, 0.0, loop.best_step)
    if config.checkpoint_path is not None:
        kept_steps = config.steps if result.best_step is None else result.best_step + 1
        if config.solver == "lbfgs":
            kept_steps = result.final.step
        checkpoint = tf.train.Checkpoint(head=head, step=tf.Variable(kept_steps, dtype=tf.int64))
        checkpoint.write(str(config.checkpoint_path))
    return dataclasses.replace(result, seconds=time.perf_counter() - started)


def _train_convex(head: Head, train: FeatureSet, validation: FeatureSet, num_classes: int,
                  config: TrainingConfig) -> TrainingResult:
    """The lbfgs solver: the path's fits as measurements (step = L-BFGS iterations so far)."""
    convex = dataclasses.replace(config.convex, objective=config.objective,
                                 label_smoothing=config.regularization.label_smoothing)
    fit = fit_head(train.features, train.objective_targets, validation.features,
                   validation.objective_targets,
                   num_classes, convex)
    head.weights.assign(fit.weights)
    head.biases.assign(fit.biases)
    history, iterations = [], 0
    for point in fit.path:
        iterations += point.iterations
        history.append(EvalPoint(iterations, point.train_accuracy, point.train_cross_entropy,
                                 point.validation_accuracy, len(validation) if len(validation)
                                 else 0, point.validation_cross_entropy))
    write_path_summaries(config.summaries_dir, fit.path, history)
    return TrainingResult(head, tuple(history), 0.0, None, fit.path, fit.chosen)


def _log_point(
    step: int,
    train_accuracy: float,
    cross_entropy: float,
    validation_accuracy: float,
    validation_count: float,
    validation_cross_entropy: float,
) -> EvalPoint:
    """Log one evaluation the way retrain.py did."""
    log.info("Step %d: Train accuracy = %.1f%%", step, train_accuracy * 100)
    log.info("Step %d: Cross entropy = %f", step, cross_entropy)
    if validation_count == 0:
        return EvalPoint(step, train_accuracy, cross_entropy, None, 0)
    log.info(
        "Step %d: Validation accuracy = %.1f%% (N=%d)",
        step,
        validation_accuracy * 100,
        validation_count,
    )
    return EvalPoint(step, train_accuracy, cross_entropy, validation_accuracy,
                     int(validation_count), validation_cross_entropy)
