"""Fine-tuning stage (--do_fine_tuning): the top of the extractor and the head, trained on images.

Runs after the head has been trained on cached vectors (so fine-tuning starts from a good head, the
Keras "unfreeze the top layers" recipe). Each epoch decodes the training images in a seeded order
through the shared decode pipeline, applies the distortions afresh (seeded by image, seed and
epoch) and takes SGD steps on the top `blocks` blocks of the extractor plus the head, at a small
learning rate. Batch norm stays frozen: the built-in extractors have it folded into the
convolutions, Keras backbones run in inference mode and their batch-norm layers are not trained.
The variables are updated in place, so the exports hold the fine-tuned weights. After every epoch
(and before the first) the whole validation split is measured; with early stopping, the weights of
the epoch with the lowest validation cross-entropy are restored. The test split is never seen here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from retrainer.cache.bottlenecks import DEFAULT_BATCH_SIZE
from retrainer.data.batches import decoded_images
from retrainer.engines.float32 import feature_function
from retrainer.extractors import FeatureExtractor
from retrainer.training.distortion_ops import distort_images
from retrainer.training.distortions import Distortions, image_seeds
from retrainer.training.head_layer import HeadLayer
from retrainer.training.head_types import EvalPoint, Head
from retrainer.training.loop import run_loop, sgd
from retrainer.training.objective_ops import dropout, regularized_loss
from retrainer.training.out_of_memory import explains_out_of_memory
from retrainer.training.regularization import Regularization

log = logging.getLogger(__name__)

_DROPOUT_STREAM = 6  # see retrainer/training/_sampling.py for the others


@dataclasses.dataclass(frozen=True)
class ImageSplit:
    """One split as image files and labels (decodable images only).

    Attributes:
        paths: the image files.
        labels: int64 [N] class indices, or float32 [N, C] 0/1 targets of a multi-label head.
    """

    paths: tuple[os.PathLike[str] | str, ...]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)


@dataclasses.dataclass(frozen=True)
class FineTuneConfig:
    """How to fine-tune (see the --fine_tune_* flags)."""

    blocks: int
    epochs: int
    learning_rate: float
    batch_size: int  # -1: the whole training split per step
    seed: int
    distortions: Distortions = Distortions()
    regularization: Regularization = Regularization()
    early_stopping_patience: int = 0  # epochs without improvement; 0 = off
    show_progress: bool = True


@dataclasses.dataclass(frozen=True)
class FineTuneResult:
    """history: one point per epoch measured (step = epoch, 0 = before fine-tuning;
    cross_entropy = the epoch's mean training loss, None for epoch 0); best_epoch: the epoch kept
    by early stopping (None without it); tuned_parameters: how many extractor weights were
    trained."""

    history: tuple[EvalPoint, ...]
    best_epoch: Optional[int]
    tuned_parameters: int
    seconds: float


def image_features(paths: Sequence[os.PathLike[str] | str], extractor: FeatureExtractor,
                   features: Any = None) -> np.ndarray:
    """Vectors of image files computed now (not cached: the extractor may have been tuned).

    Args:
        paths: decodable image files.
        extractor: the (possibly fine-tuned) extractor.
        features: a `feature_function(extractor)` to reuse across calls (traced once).

    Returns:
        float32 [N, D] in the order of `paths`.
    """
    features = features or feature_function(extractor)
    vectors = np.zeros((len(paths), extractor.spec.vector_size), np.float32)
    for positions, images, _, _ in decoded_images(paths, extractor.spec.input_size,
                                                  DEFAULT_BATCH_SIZE):
        vectors[positions.numpy()] = features(images).numpy()
    return vectors


def fine_tune(extractor: FeatureExtractor, head: Head, train: ImageSplit,
              validation: ImageSplit, config: FineTuneConfig) -> FineTuneResult:
    """Train the top of `extractor` and `head` together on images, in place.

    Args:
        extractor: the feature extractor; its `fine_tunable_variables` are updated.
        head: the head already trained on cached vectors; updated.
        train: training images, at least one.
        validation: validation images; may be empty (then no early stopping).
        config: depth, epochs, learning rate, batch size, distortions, regularisation, patience.

    Returns:
        FineTuneResult.

    Raises:
        UsageError: the extractor cannot be trained, or the accelerator ran out of memory.
    """
    started = time.perf_counter()
    tuned = extractor.fine_tunable_variables(config.blocks)
    batch_size = len(train) if config.batch_size == -1 else min(config.batch_size, len(train))
    steps_per_epoch = math.ceil(len(train) / batch_size)
    with explains_out_of_memory(f"fine-tuning batches of {batch_size} images",
                                "lower --train_batch_size"), \
            tqdm(total=config.epochs * steps_per_epoch, unit="step", desc="Fine-tuning",
                 dynamic_ncols=True, disable=None if config.show_progress else True) as progress:
        layer = HeadLayer(head)
        job = _FineTuneEpochs(extractor, layer, tuned, train, validation, batch_size, config,
                              progress)
        loop = run_loop(job, range(config.epochs + 1), config.early_stopping_patience,
                        bool(len(validation)))
    head.weights, head.biases = layer.weights.numpy(), layer.biases.numpy()
    if loop.best_step == 0:
        log.warning("Fine-tuning did not lower the validation cross entropy; keeping the weights "
                    "from before it (epoch 0).")
    parameters = sum(int(np.prod(variable.shape)) for variable in tuned)
    return FineTuneResult(loop.history, loop.best_step, parameters, time.perf_counter() - started)


class _FineTuneEpochs:
    """Fine-tuning as a job of the training loop: one step is an epoch, measured on the whole
    validation split (epoch 0: before any training)."""

    def __init__(self, extractor: FeatureExtractor, head: HeadLayer, tuned: Sequence[tf.Variable],
                 train: ImageSplit, validation: ImageSplit, batch_size: int,
                 config: FineTuneConfig, progress: tqdm) -> None:
        self.extractor, self.head, self.config = extractor, head, config
        self.train, self.validation, self.batch_size = train, validation, batch_size
        self.progress = progress
        self._variables = (*tuned, *head.trainable_variables)
        self.optimizer = sgd(config.learning_rate, config.regularization.momentum)
        self.features = feature_function(extractor)
        self.step = 0
        height, width = extractor.spec.input_size
        targets = tf.TensorSpec([None, *train.labels.shape[1:]], tf.as_dtype(train.labels.dtype))
        self.train_step = tf.function(self._train_step, input_signature=[
            tf.TensorSpec([None, height, width, 3], tf.uint8), targets,
            tf.TensorSpec([None, 2], tf.int64), tf.TensorSpec([], tf.int64)])
        self.dropout_seed = tf.random.experimental.stateless_fold_in(
            tf.constant([config.seed, 0], tf.int64), _DROPOUT_STREAM)

    @property
    def variables(self) -> tuple[tf.Variable, ...]:
        return self._variables

    def advance(self, epochs: Sequence[int]) -> list[EvalPoint]:
        return [self._advance(epoch) for epoch in epochs]

    def _advance(self, epoch: int) -> EvalPoint:
        """Train one more epoch (none for epoch 0), then measure on the validation split."""
        train_loss = float(np.mean(list(self._epoch(epoch)))) if epoch else None
        if not len(self.validation):
            return EvalPoint(epoch, None, train_loss, None, 0)
        vectors = image_features(self.validation.paths, self.extractor, self.features)
        logits = self.head(tf.constant(vectors)).numpy()
        labels = self.validation.labels  # int64 [N] or float32 [N, C] targets
        objective = self.head.objective
        accuracy, loss = objective.accuracy(labels, logits), objective.loss(labels, logits)
        point = EvalPoint(epoch, None, train_loss, accuracy, len(self.validation), loss)
        log.info("Fine-tuning epoch %d: %svalidation accuracy = %.1f%%, cross entropy = %f",
                 epoch, "" if train_loss is None else f"train loss = {train_loss:.4f}, ",
                 accuracy * 100, loss)
        return point

    def _train_step(self, images: tf.Tensor, labels: tf.Tensor, seeds: tf.Tensor,
                    step: tf.Tensor) -> tf.Tensor:
        regularization, distortions = self.config.regularization, self.config.distortions
        pixels = tf.cast(images, tf.float32) / 255.0
        if distortions.enabled:
            pixels = distort_images(pixels, seeds, distortions)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(self._variables)
            features = dropout(
                regularization, self.extractor(pixels),
                tf.random.experimental.stateless_fold_in(self.dropout_seed, step))
            loss = regularized_loss(regularization, labels, self.head(features),
                                    self.head.weights, self.head.objective)
        gradients = tape.gradient(loss, self._variables)
        self.optimizer.apply_gradients(zip(gradients, self._variables))
        return loss

    def _epoch(self, epoch: int) -> Iterator[float]:
        """Yield each step's training loss over one seeded-order pass of the training images."""
        train = self.train
        order = np.random.default_rng([self.config.seed, epoch]).permutation(len(train))
        dataset = decoded_images([train.paths[index] for index in order],
                                 self.extractor.spec.input_size, self.batch_size,
                                 deterministic=True)
        for positions, images, digests, reasons in dataset:
            readable = reasons.numpy() == b""  # a file changed since the plain pass
            labels = train.labels[order[positions.numpy()]]
            seeds = image_seeds([digest.decode() for digest in digests.numpy()],
                                self.config.seed, f"epoch{epoch}")
            loss = self.train_step(tf.boolean_mask(images, readable), labels[readable],
                                   seeds[readable], tf.constant(self.step, tf.int64))
            self.step += 1
            self.progress.update(1)
            self.progress.set_postfix(epoch=epoch, loss=f"{float(loss):.4f}")
            yield float(loss)
