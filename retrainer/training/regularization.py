"""The regularisation make_image_classifier users know, shared by head training and fine-tuning.

All off by default, so a plain run is retrain.py's: plain SGD on the mean cross-entropy, with the
exact same operations (and so the same numbers) as before these options existed. Each option is a
trace-time branch: an option left at 0 adds no operation to the graph.
- momentum: SGD with momentum (TensorFlow's MomentumOptimizer update: v = m*v + g; w -= lr*v);
- dropout_rate: dropout on the bottleneck vector before the new layer, as make_image_classifier;
- l2_regularizer: l2 * sum(weights**2) of the new layer's weights added to the loss (Keras' l2);
- label_smoothing: targets (1 - s) * one_hot + s / C (Keras' CategoricalCrossentropy).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Regularization:
    """Regularisation settings (0 = off for each)."""

    momentum: float = 0.0
    dropout_rate: float = 0.0
    l2_regularizer: float = 0.0
    label_smoothing: float = 0.0

    def dropout(self, features: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """float32 [N, D] -> [N, D] with a `dropout_rate` share zeroed (training only)."""
        if not self.dropout_rate:
            return features
        return tf.nn.experimental.stateless_dropout(features, self.dropout_rate, seed=seed)

    def loss(self, labels: tf.Tensor, logits: tf.Tensor, weights: tf.Variable) -> tf.Tensor:
        """Training loss: mean cross entropy (label-smoothed if asked) + the l2 penalty.

        Args:
            labels: int64 [N] classes.
            logits: float32 [N, C].
            weights: the new layer's kernel float32 [D, C] (for the l2 penalty).
        """
        if self.label_smoothing:
            classes = tf.shape(logits)[1]
            targets = tf.one_hot(labels, classes) * (1.0 - self.label_smoothing)
            targets += self.label_smoothing / tf.cast(classes, tf.float32)
            loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(targets, logits))
        else:
            loss = cross_entropy(labels, logits)
        if self.l2_regularizer:
            loss += self.l2_regularizer * tf.reduce_sum(tf.square(weights))
        return loss


def cross_entropy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Mean softmax cross entropy: int64 [N] labels, float32 [N, C] logits -> float32 scalar."""
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    )


def accuracy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Fraction of rows whose arg-max logit is the label (float32 scalar)."""
    return tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, axis=1), labels), tf.float32))


class SGD(tf.Module):
    """Plain SGD, or SGD with momentum (one velocity variable per trained variable)."""

    def __init__(self, variables: Sequence[tf.Variable], learning_rate: float,
                 momentum: float = 0.0) -> None:
        super().__init__(name="sgd")
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.velocities = [tf.Variable(tf.zeros_like(variable), trainable=False)
                           for variable in variables] if momentum else []

    def apply(self, variables: Sequence[tf.Variable], gradients: Sequence[tf.Tensor]) -> None:
        """One update of `variables` (the ones given at construction, same order)."""
        if not self.momentum:
            for variable, gradient in zip(variables, gradients):
                variable.assign_sub(self.learning_rate * gradient)
            return
        for variable, velocity, gradient in zip(variables, self.velocities, gradients):
            velocity.assign(self.momentum * velocity + gradient)
            variable.assign_sub(self.learning_rate * velocity)
