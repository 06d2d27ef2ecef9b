"""Seeded, class-balanced batch sampling shared by training, validation and testing.

retrain.py drew each example of a batch by picking a class uniformly, then an image of that class
uniformly (with replacement), so small classes are seen as often as large ones. Classes with no
examples in the split are left out of the draw (retrain.py died on them). Draws use TensorFlow's
stateless random ops keyed by (seed, stream, block of steps), so a step's batch does not depend on
how the steps are grouped into tf.function calls, and the same seed gives the same batches. The
batches of many steps are drawn in one go (a block of steps per draw), so a training loop samples
before its steps instead of spending a dozen small ops on each.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from retrainer.training.options import WHOLE_SET

# Independent random streams derived from one user seed.
INIT_STREAM, TRAIN_STREAM, VALIDATION_STREAM, TEST_STREAM = 1, 2, 3, 4
DROPOUT_STREAM = 5  # dropout masks of the head (training/regularization.py)

BLOCK_STEPS = 64  # consecutive steps whose batches are drawn together
BLOCK_ELEMENTS = 1 << 16  # ... as long as a block holds at most this many indices


def stream_seed(seed: int, stream: int) -> tf.Tensor:
    """The stateless seed (int64 [2]) of one named random stream."""
    return tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), stream)


class BalancedSampler:
    """Draws class-balanced batches of example indices for one split.

    Args:
        labels: int [N] class index of each example, N >= 1.
        batch_size: examples per batch (>= 1), or WHOLE_SET for every example once, in order.
    """

    def __init__(self, labels: np.ndarray, batch_size: int) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.size == 0:
            raise ValueError("cannot sample batches from an empty split")
        order = np.argsort(labels, kind="stable")
        _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
        self.size = int(labels.size)
        self.batch_size = int(batch_size)
        # steps per draw: up to BLOCK_STEPS, fewer for large batches (bounded memory per draw)
        self._block_steps = max(1, min(BLOCK_STEPS, BLOCK_ELEMENTS // max(1, self.batch_size)))
        self._order = tf.constant(order, tf.int64)
        self._starts = tf.constant(starts, tf.int64)
        self._counts = tf.constant(counts, tf.int64)

    def sample(self, seed: tf.Tensor, step: tf.Tensor | int) -> tf.Tensor:
        """Indices of the batch for one `step` (int64 scalar): int64 [B] (see `sample_steps`)."""
        return self.sample_steps(seed, tf.reshape(tf.cast(step, tf.int64), [1]))[0]

    def sample_steps(self, seed: tf.Tensor, steps: tf.Tensor) -> tf.Tensor:
        """Indices of the batches for several steps (works eagerly and inside tf.function).

        Args:
            seed: int64 [2], a stream seed from `stream_seed`.
            steps: int64 [S] step numbers, in any order.

        Returns:
            int64 [S, B] indices into the split (B = batch_size, or N for WHOLE_SET).
        """
        steps = tf.cast(steps, tf.int64)
        if self.batch_size == WHOLE_SET:
            return tf.tile(tf.range(self.size, dtype=tf.int64)[tf.newaxis], [tf.size(steps), 1])
        blocks, slots = tf.unique(steps // self._block_steps, out_idx=tf.int64)
        drawn = tf.map_fn(lambda block: self._block(seed, block), blocks,
                          fn_output_signature=tf.TensorSpec(
                              [self._block_steps, self.batch_size], tf.int64))
        return tf.gather_nd(drawn, tf.stack([slots, steps % self._block_steps], axis=1))

    def _block(self, seed: tf.Tensor, block: tf.Tensor) -> tf.Tensor:
        """int64 [block steps, B]: the batches of one block of consecutive steps."""
        block_seed = tf.random.experimental.stateless_fold_in(seed, block)
        class_seed, within_seed = tf.unstack(
            tf.random.experimental.stateless_split(block_seed, num=2)
        )
        shape = [self._block_steps, self.batch_size]
        num_classes = tf.size(self._counts, out_type=tf.int64)
        picked = tf.random.stateless_uniform(
            shape, class_seed, minval=0, maxval=num_classes, dtype=tf.int64
        )
        counts = tf.gather(self._counts, picked)
        fraction = tf.random.stateless_uniform(shape, within_seed, dtype=tf.float64)
        within = tf.minimum(tf.cast(fraction * tf.cast(counts, tf.float64), tf.int64), counts - 1)
        return tf.gather(self._order, tf.gather(self._starts, picked) + within)
