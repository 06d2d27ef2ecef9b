"""The objectives' formulas and the SGD regularisation as TensorFlow ops, for the TensorFlow
paths: the SGD loop, fine-tuning and the exported graph (training/objectives.py holds the numpy
formulas and says what each objective means; training/regularization.py the settings)."""

from __future__ import annotations

import tensorflow as tf

from retrainer.training.objectives import SOFTMAX, Objective
from retrainer.training.regularization import Regularization


def probabilities(objective: Objective, logits: tf.Tensor) -> tf.Tensor:
    """float32 [N, C] logits -> float32 [N, C] probabilities."""
    return tf.sigmoid(logits) if objective.multi_label else tf.nn.softmax(logits)


def loss(objective: Objective, targets: tf.Tensor, logits: tf.Tensor,
         label_smoothing: float = 0.0) -> tf.Tensor:
    """Mean cross entropy (float32 scalar), with targets smoothed towards uniform if asked."""
    classes = tf.shape(logits)[1]
    if objective.multi_label:
        dense = tf.cast(targets, logits.dtype)
        if label_smoothing:
            dense = dense * (1.0 - label_smoothing) + 0.5 * label_smoothing
        per_label = tf.nn.sigmoid_cross_entropy_with_logits(dense, logits)
        return tf.reduce_mean(tf.reduce_sum(per_label, axis=1))
    if not label_smoothing:
        return tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits))
    dense = tf.one_hot(targets, classes, dtype=logits.dtype) * (1.0 - label_smoothing)
    dense += label_smoothing / tf.cast(classes, logits.dtype)
    return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(dense, logits))


def accuracy(objective: Objective, targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Objective.accuracy as a float32 scalar tensor."""
    if objective.multi_label:
        predicted = tf.cast(logits > 0, tf.float32)
        return tf.reduce_mean(tf.cast(tf.equal(predicted, tf.cast(targets, tf.float32)),
                                      tf.float32))
    hits = tf.equal(tf.argmax(logits, axis=1, output_type=targets.dtype), targets)
    return tf.reduce_mean(tf.cast(hits, tf.float32))


def dropout(regularization: Regularization, features: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """float32 [N, D] -> [N, D] with a `dropout_rate` share zeroed (training only)."""
    if not regularization.dropout_rate:
        return features
    return tf.nn.experimental.stateless_dropout(features, regularization.dropout_rate, seed=seed)


def regularized_loss(regularization: Regularization, targets: tf.Tensor, logits: tf.Tensor,
                     weights: tf.Variable, objective: Objective = SOFTMAX) -> tf.Tensor:
    """Training loss: the objective's mean cross entropy (label-smoothed if asked) + l2.

    Args:
        regularization: the settings.
        targets: the objective's targets (int64 [N] classes for softmax).
        logits: float32 [N, C].
        weights: the new layer's kernel float32 [D, C] (for the l2 penalty).
        objective: softmax or sigmoid.
    """
    value = loss(objective, targets, logits, regularization.label_smoothing)
    if regularization.l2_regularizer:
        value += regularization.l2_regularizer * tf.reduce_sum(tf.square(weights))
    return value
