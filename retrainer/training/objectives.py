"""What the head predicts: one class per image (softmax) or any number of them (sigmoid).

An objective is the one place that knows how logits become probabilities, what the training loss
is and how the validation split scores a head, so every solver and loop takes it as a parameter
instead of being written once per kind of label. Targets are int64 [N] class indices for
`SOFTMAX` and float32 [N, C] 0/1 rows for `SIGMOID`.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Objective:
    """Softmax cross-entropy (single label) or sigmoid binary cross-entropy (multi-label).

    Attributes:
        name: "softmax" or "sigmoid".
    """

    name: str

    def __post_init__(self) -> None:
        if self.name not in ("softmax", "sigmoid"):
            raise ValueError(f"name must be one of ['softmax', 'sigmoid']. Received: {self.name!r}")

    @property
    def multi_label(self) -> bool:
        return self.name == "sigmoid"

    def probabilities(self, logits: tf.Tensor) -> tf.Tensor:
        """float32 [N, C] logits -> float32 [N, C] probabilities."""
        return tf.sigmoid(logits) if self.multi_label else tf.nn.softmax(logits)

    def loss(self, targets: tf.Tensor, logits: tf.Tensor, label_smoothing: float = 0.0
             ) -> tf.Tensor:
        """Mean cross entropy (float32 scalar), with targets smoothed towards uniform if asked."""
        classes = tf.shape(logits)[1]
        if self.multi_label:
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

    def accuracy(self, targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        """Softmax: the fraction of rows whose top class is the label. Sigmoid: the fraction of
        (row, class) decisions at probability 0.5 that are right. float32 scalar."""
        if self.multi_label:
            predicted = tf.cast(logits > 0, tf.float32)
            return tf.reduce_mean(tf.cast(tf.equal(predicted, tf.cast(targets, tf.float32)),
                                          tf.float32))
        hits = tf.equal(tf.argmax(logits, axis=1, output_type=targets.dtype), targets)
        return tf.reduce_mean(tf.cast(hits, tf.float32))


SOFTMAX = Objective("softmax")
SIGMOID = Objective("sigmoid")
