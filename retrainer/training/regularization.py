"""The regularisation make_image_classifier users know, for the SGD loop (head and fine-tuning).

All off by default, so a plain SGD run is retrain.py's: plain SGD on the mean cross-entropy. Each
option is a trace-time branch: an option left at 0 adds no operation to the graph.
- momentum: SGD with momentum (TensorFlow's MomentumOptimizer update: v = m*v + g; w -= lr*v);
- dropout_rate: dropout on the bottleneck vector before the new layer, as make_image_classifier;
- l2_regularizer: l2 * sum(weights**2) of the new layer's weights added to the loss (Keras' l2);
- label_smoothing: targets (1 - s) * one_hot + s / C (Keras' CategoricalCrossentropy).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from retrainer.training import objective_ops
from retrainer.training.objectives import SOFTMAX, Objective


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

    def loss(self, targets: tf.Tensor, logits: tf.Tensor, weights: tf.Variable,
             objective: Objective = SOFTMAX) -> tf.Tensor:
        """Training loss: the objective's mean cross entropy (label-smoothed if asked) + l2.

        Args:
            targets: the objective's targets (int64 [N] classes for softmax).
            logits: float32 [N, C].
            weights: the new layer's kernel float32 [D, C] (for the l2 penalty).
            objective: softmax or sigmoid.
        """
        loss = objective_ops.loss(objective, targets, logits, self.label_smoothing)
        if self.l2_regularizer:
            loss += self.l2_regularizer * tf.reduce_sum(tf.square(weights))
        return loss
