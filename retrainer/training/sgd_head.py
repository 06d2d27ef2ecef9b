"""retrain.py's head training: plain SGD on random class-balanced batches, measured every
`eval_step_interval` steps and at the last one, run by the one training loop (training/loop.py)
with the steps between two measurements inside one tf.function call. The `--head_solver sgd`
path of training/head.py, and the only head solver that needs TensorFlow.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

import tensorflow as tf

from retrainer.io.storage import as_path
from retrainer.training import objective_ops
from retrainer.training._sampling import (
    DROPOUT_STREAM,
    TRAIN_STREAM,
    VALIDATION_STREAM,
    BalancedSampler,
    stream_seed,
)
from retrainer.training.head_layer import HeadLayer, initial_head
from retrainer.training.head_types import (
    EvalPoint,
    FeatureSet,
    Head,
    TrainingConfig,
    TrainingResult,
)
from retrainer.training.loop import run_loop, sgd
from retrainer.training.objective_ops import dropout, regularized_loss
from retrainer.training.summaries import fresh_writer, write_scalars

log = logging.getLogger(__name__)

UNROLLED = 8  # SGD steps per iteration of the traced loop


def train_sgd(train: FeatureSet, validation: FeatureSet, num_classes: int,
              config: TrainingConfig, on_store: Optional[Callable[[int, Head], None]] = None,
              store_every: int = 0) -> TrainingResult:
    """retrain.py's SGD from its truncated-normal start (training/head.py's `train_head` says
    what the arguments mean); `seconds` is left to the caller."""
    layer = HeadLayer(initial_head(train.features.shape[1], num_classes, config.seed,
                                   config.objective))
    job = _SgdSteps(layer, train, validation, config, on_store, store_every)
    schedule = sorted(set(range(0, config.steps, config.eval_step_interval))
                      | {config.steps - 1})
    try:
        loop = run_loop(job, schedule, config.early_stopping_patience, bool(len(validation)))
    finally:
        job.close()
    return TrainingResult(layer.head(), loop.history, 0.0, loop.best_step)


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

    def __init__(self, head: HeadLayer, train: FeatureSet, validation: FeatureSet,
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
                self.on_store(store, self.head.head())
                continue
            run = ends if store is None else ends[:ends.index(store) + 1]
            rows = self._train_and_measure(tf.constant(self.next_step, tf.int64),
                                           tf.constant(run, tf.int64))
            self.next_step = run[-1] + 1
            points += [_log_point(step, *row) for step, row in zip(run, rows.numpy().tolist())]
            if store is not None:
                self.on_store(store, self.head.head())
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
            features = dropout(
                regularization, features,
                tf.random.experimental.stateless_fold_in(self.dropout_seed, step))
        with tf.GradientTape() as tape:
            loss = regularized_loss(regularization, labels, self.head(features),
                                    self.head.weights, self.head.objective)
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
