"""Head training stage: a new softmax layer (dense D -> C) fitted to bottleneck vectors.

Takes arrays of features, never cache paths, so later stages (distortions, fine-tuning) can feed
freshly computed features instead. Runs retrain.py's loop -- plain SGD on random class-balanced
batches, evaluating every `eval_step_interval` steps and at the last one -- but the steps and their
evaluations run inside a tf.function, many per call, so thousands of steps take seconds. Optional:
make_image_classifier's regularisation (training/regularization.py) and early stopping, which ends
training once the validation cross-entropy has not improved for `early_stopping_patience`
evaluations in a row and restores the weights of the best evaluation (validation data only).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import tensorflow as tf

from retrainer.io.storage import as_path
from retrainer.training._sampling import (
    DROPOUT_STREAM,
    INIT_STREAM,
    TRAIN_STREAM,
    VALIDATION_STREAM,
    BalancedSampler,
    stream_seed,
)
from retrainer.training.early_stopping import BestWeights
from retrainer.training.regularization import (
    SGD,
    Regularization,
    accuracy,
    cross_entropy,
)

log = logging.getLogger(__name__)

INIT_STDDEV = 0.001  # retrain.py's truncated-normal initialisation of the new layer
_CHUNK_SECONDS = 0.5  # grow the steps per traced call while a call takes less than this


@dataclasses.dataclass(frozen=True)
class FeatureSet:
    """One split's features and integer labels.

    Attributes:
        features: float32 [N, D] bottleneck vectors.
        labels: int64 [N] class indices.
    """

    features: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """How to train the head (retrain.py's flags; -1 batch size = the whole split)."""

    steps: int
    learning_rate: float
    train_batch_size: int
    validation_batch_size: int
    eval_step_interval: int
    seed: int
    summaries_dir: Optional[Path] = None
    checkpoint_path: Optional[Path] = None
    regularization: Regularization = Regularization()
    early_stopping_patience: int = 0  # evaluations without improvement; 0 = no early stopping


@dataclasses.dataclass(frozen=True)
class EvalPoint:
    """Metrics logged at one evaluation step (validation_* are None without validation data)."""

    step: int
    train_accuracy: float
    cross_entropy: float
    validation_accuracy: Optional[float]
    validation_count: int
    validation_cross_entropy: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class TrainingResult:
    """The head, its evaluations (up to where training stopped), and the step early stopping kept
    (None without early stopping)."""

    head: "SoftmaxHead"
    history: tuple[EvalPoint, ...]
    seconds: float
    best_step: Optional[int] = None


class SoftmaxHead(tf.Module):
    """The new final layer: logits = features @ weights + biases."""

    def __init__(self, vector_size: int, num_classes: int, seed: int) -> None:
        super().__init__(name="final_retrain_ops")
        initial = tf.random.stateless_truncated_normal(
            [vector_size, num_classes], stream_seed(seed, INIT_STREAM), stddev=INIT_STDDEV
        )
        self.weights = tf.Variable(initial, name="final_weights")
        self.biases = tf.Variable(tf.zeros([num_classes]), name="final_biases")

    def __call__(self, features: tf.Tensor) -> tf.Tensor:
        """float32 [N, D] features -> float32 [N, C] logits."""
        return tf.matmul(features, self.weights) + self.biases

    def probabilities(self, features: tf.Tensor) -> tf.Tensor:
        """float32 [N, D] features -> float32 [N, C] softmax probabilities."""
        return tf.nn.softmax(self(features))


class _Split:
    """One split on the device, with its batch sampler."""

    def __init__(self, data: FeatureSet, batch_size: int, seed: tf.Tensor) -> None:
        self.sampler = BalancedSampler(data.labels, batch_size)
        self.seed = seed
        self.features = tf.constant(data.features, tf.float32)
        self.labels = tf.constant(data.labels, tf.int64)

    def batch(self, step: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        indices = self.sampler.sample(self.seed, step)
        return tf.gather(self.features, indices), tf.gather(self.labels, indices)


class _TrainingLoop:
    """The traced function of one training run: SGD steps with evaluations and summaries."""

    def __init__(
        self, head: SoftmaxHead, train: FeatureSet, validation: FeatureSet, config: TrainingConfig
    ) -> None:
        self.head = head
        self.regularization = config.regularization
        self.optimizer = SGD(head.trainable_variables, config.learning_rate,
                             config.regularization.momentum)
        self.dropout_seed = stream_seed(config.seed, DROPOUT_STREAM)
        self.eval_step_interval = config.eval_step_interval
        self.last_step = config.steps - 1
        self.train = _Split(train, config.train_batch_size, stream_seed(config.seed, TRAIN_STREAM))
        self.validation = None
        if len(validation):
            seed = stream_seed(config.seed, VALIDATION_STREAM)
            self.validation = _Split(validation, config.validation_batch_size, seed)
        self.writers = None
        if config.summaries_dir is not None:
            self.writers = {
                name: _fresh_writer(as_path(config.summaries_dir) / name)
                for name in ("train", "validation")
            }

    @tf.function(input_signature=[tf.TensorSpec([], tf.int64), tf.TensorSpec([None], tf.int64)])
    def run_steps(self, first: tf.Tensor, ends: tf.Tensor) -> tf.Tensor:
        """SGD steps from `first` to ends[-1], measuring after each step in `ends` (ascending).

        Returns:
            float32 [len(ends), 5]: per end step, train accuracy and cross entropy on its training
            batch, validation accuracy on its validation batch (-1 without validation data),
            that batch's size (0 without) and its cross entropy. Summaries are written for
            evaluation steps only.
        """
        rows = tf.TensorArray(tf.float32, size=tf.size(ends), element_shape=[5])
        start = first
        for index in tf.range(tf.size(ends)):
            end = ends[index]
            for step in tf.range(start, end + 1):
                self._sgd_step(step)
            is_evaluation = tf.logical_or(end % self.eval_step_interval == 0, end == self.last_step)
            with tf.summary.record_if(is_evaluation):
                rows = rows.write(index, self._evaluate(end))
            start = end + 1
        return rows.stack()

    def _sgd_step(self, step: tf.Tensor) -> None:
        features, labels = self.train.batch(step)
        features = self.regularization.dropout(
            features, tf.random.experimental.stateless_fold_in(self.dropout_seed, step))
        with tf.GradientTape() as tape:
            loss = self.regularization.loss(labels, self.head(features), self.head.weights)
        gradients = tape.gradient(loss, self.head.trainable_variables)
        self.optimizer.apply(self.head.trainable_variables, gradients)

    def _evaluate(self, step: tf.Tensor) -> tf.Tensor:
        """Metrics at `step` (after its update), as retrain.py measured them, plus summaries."""
        features, labels = self.train.batch(step)
        logits = self.head(features)
        train_accuracy, train_loss = accuracy(labels, logits), cross_entropy(labels, logits)
        validation_accuracy, validation_count = tf.constant(-1.0), tf.constant(0.0)
        validation_cross_entropy = tf.constant(-1.0)
        if self.validation is not None:
            features, labels = self.validation.batch(step)
            validation_logits = self.head(features)
            validation_accuracy = accuracy(labels, validation_logits)
            validation_cross_entropy = cross_entropy(labels, validation_logits)
            validation_count = tf.cast(tf.size(labels), tf.float32)
        if self.writers is not None:
            # Root name scope: inside the traced loop, tags would otherwise get a "while/" prefix.
            with self.writers["train"].as_default(step=step), tf.compat.v1.name_scope(None):
                tf.summary.scalar("accuracy", train_accuracy)
                tf.summary.scalar("cross_entropy", train_loss)
                tf.summary.histogram("final_weights", self.head.weights)
                tf.summary.histogram("final_biases", self.head.biases)
            if self.validation is not None:
                with self.writers["validation"].as_default(step=step), tf.compat.v1.name_scope(None):
                    tf.summary.scalar("accuracy", validation_accuracy)
                    tf.summary.scalar("cross_entropy", validation_cross_entropy)
        return tf.stack([train_accuracy, train_loss, validation_accuracy, validation_count,
                         validation_cross_entropy])

    def close(self) -> None:
        for writer in (self.writers or {}).values():
            writer.close()


def _fresh_writer(folder: Path) -> tf.summary.SummaryWriter:
    """A writer replacing the previous run's event files (retrain.py emptied summaries_dir)."""
    for old_events in folder.glob("events.out.tfevents.*"):
        old_events.unlink()
    return tf.summary.create_file_writer(str(folder))


def train_head(
    train: FeatureSet,
    validation: FeatureSet,
    num_classes: int,
    config: TrainingConfig,
    on_store: Optional[Callable[[int, SoftmaxHead], None]] = None,
    store_every: int = 0,
) -> TrainingResult:
    """Train a new softmax layer on bottleneck vectors.

    Args:
        train: the training split; at least one example.
        validation: the validation split; may be empty (validation is then skipped).
        num_classes: C, the number of output classes (classes may lack training examples).
        config: steps, learning rate, batch sizes, seed and where to write summaries/checkpoint.
        on_store: called as on_store(step, head) every `store_every` steps (step > 0), e.g. to
            export intermediate graphs.
        store_every: 0 = never call `on_store`.

    Returns:
        The trained head, the metrics logged at each evaluation step, the time taken, and with
        early stopping the step whose weights were kept.
    """
    started = time.perf_counter()
    head = SoftmaxHead(train.features.shape[1], num_classes, config.seed)
    loop = _TrainingLoop(head, train, validation, config)
    if loop.validation is None:
        log.warning("No validation images: skipping validation during training.")
    evaluations = set(range(0, config.steps, config.eval_step_interval)) | {config.steps - 1}
    stores = set(range(store_every, config.steps, store_every)) if store_every > 0 else set()
    stopper = BestWeights(head.trainable_variables, config.early_stopping_patience,
                          loop.validation is not None)
    # Early stopping decides after each evaluation, so each one ends a traced call.
    stops = stores | (evaluations if stopper.enabled else set())
    history = []
    first = 0
    try:
        for ends in _chunks(sorted(evaluations | stores), stops):
            rows = loop.run_steps(tf.constant(first, tf.int64), tf.constant(ends, tf.int64))
            first = ends[-1] + 1
            for end, row in zip(ends, rows.numpy().tolist()):
                if end in evaluations:
                    history.append(_log_point(end, *row))
            if ends[-1] in stores and on_store is not None:
                on_store(ends[-1], head)
            if ends[-1] in evaluations and stopper.record(history[-1].validation_cross_entropy,
                                                          history[-1].step):
                break
    finally:
        loop.close()
    best_step = stopper.restore_best()
    if config.checkpoint_path is not None:
        kept_steps = config.steps if best_step is None else best_step + 1
        checkpoint = tf.train.Checkpoint(head=head, step=tf.Variable(kept_steps, dtype=tf.int64))
        checkpoint.write(str(config.checkpoint_path))
    return TrainingResult(head=head, history=tuple(history), seconds=time.perf_counter() - started,
                          best_step=best_step)


def _chunks(boundaries: list[int], stops: set[int]) -> Iterator[list[int]]:
    """Split the steps where control must stop (ascending) into runs for one `run_steps` call each.

    Runs double in length while calls are quick (negligible call overhead on fast steps, live logs
    on slow ones); a step in `stops` always ends a run, so control returns right after its update.
    """
    index, span = 0, 1
    while index < len(boundaries):
        stop = min(index + span, len(boundaries))
        stop = next((k + 1 for k in range(index, stop) if boundaries[k] in stops), stop)
        started = time.perf_counter()
        yield boundaries[index:stop]
        if time.perf_counter() - started < _CHUNK_SECONDS:
            span *= 2
        index = stop


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
