"""The head as TensorFlow variables, for the paths that compute with TensorFlow: the SGD loop,
fine-tuning and every export.

`training.head.Head` holds the layer as numpy arrays (the default solver, the evaluation and a
rerun with every output kept need no TensorFlow); `HeadLayer` wraps it in a tf.Module whose
variables `final_weights` and `final_biases` train in place and freeze into the exported graph.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from retrainer.training import objective_ops
from retrainer.training._sampling import INIT_STREAM, stream_seed
from retrainer.training.head_types import Head
from retrainer.training.objectives import SOFTMAX, Objective

INIT_STDDEV = 0.001  # retrain.py's truncated-normal initialisation of the new layer


class HeadLayer(tf.Module):
    """logits = features @ final_weights + final_biases, then the objective's probabilities."""

    def __init__(self, head: Head) -> None:
        super().__init__(name="final_retrain_ops")
        self.weights = tf.Variable(np.asarray(head.weights, np.float32), name="final_weights")
        self.biases = tf.Variable(np.asarray(head.biases, np.float32), name="final_biases")
        self.objective = head.objective

    def __call__(self, features: tf.Tensor) -> tf.Tensor:
        """float32 [N, D] features -> float32 [N, C] logits."""
        return tf.matmul(features, self.weights) + self.biases

    def probabilities(self, features: tf.Tensor) -> tf.Tensor:
        """float32 [N, D] features -> float32 [N, C] probabilities."""
        return objective_ops.probabilities(self.objective, self(features))

    def assign(self, head: Head) -> None:
        """Take `head`'s values (same shape)."""
        self.weights.assign(np.asarray(head.weights, np.float32))
        self.biases.assign(np.asarray(head.biases, np.float32))

    def head(self) -> Head:
        """The layer's current values as a numpy Head (a copy)."""
        return Head(self.weights.numpy(), self.biases.numpy(), self.objective)


def initial_head(vector_size: int, num_classes: int, seed: int,
                 objective: Objective = SOFTMAX) -> Head:
    """retrain.py's untrained layer: truncated-normal weights (stddev INIT_STDDEV), zero biases,
    seeded by the run's seed."""
    weights = tf.random.stateless_truncated_normal(
        [vector_size, num_classes], stream_seed(seed, INIT_STREAM), stddev=INIT_STDDEV)
    return Head(weights.numpy(), np.zeros(num_classes, np.float32), objective)

