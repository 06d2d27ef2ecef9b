"""TensorBoard summaries of head training: retrain.py's scalars and weight histograms.

retrain.py wrote, at each evaluation, the training and validation accuracy and cross entropy and
histograms of the new layer's weights and biases, into `<summaries_dir>/train` and `/validation`.
The histograms here are TensorBoard's own format (30 equal-width buckets between the minimum and
the maximum, as `tf.summary.histogram` writes them) but bucketed by one `histogram_fixed_width`
op: `tf.summary.histogram` compares every value with every bucket, which made the summaries of
retrain.py's 400 evaluations cost as much as a third of its 4,000 steps.
"""

from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf
from tensorboard.plugins.histogram import metadata as histogram_metadata

from retrainer.io.storage import AnyPath, as_path
from retrainer.training.convex import PathPoint
from retrainer.training.head_types import EvalPoint

HISTOGRAM_BUCKETS = 30  # tf.summary.histogram's default
_HISTOGRAM = histogram_metadata.create_summary_metadata(display_name=None, description=None)


def fresh_writer(folder: AnyPath) -> tf.summary.SummaryWriter:
    """A writer replacing the previous run's event files (retrain.py emptied summaries_dir)."""
    folder = as_path(folder)
    for old_events in folder.glob("events.out.tfevents.*"):
        old_events.unlink()
    return tf.summary.create_file_writer(str(folder))


def histogram(name: str, values: tf.Tensor, step: tf.Tensor) -> None:
    """Write a histogram of `values` (any shape) under the default writer, as
    `tf.summary.histogram(name, values, step)` does (same buckets, same plugin data)."""
    tf.summary.write(name, histogram_buckets(values), step=step, metadata=_HISTOGRAM)


def histogram_buckets(values: tf.Tensor, count: int = HISTOGRAM_BUCKETS) -> tf.Tensor:
    """float64 [count, 3]: (left edge, right edge, number of values) per bucket. Equal-width
    buckets from the minimum to the maximum, the last one closed; when every value is the same,
    every edge is that value and the last bucket holds them all (TensorBoard's convention)."""
    values = tf.reshape(tf.cast(values, tf.float64), [-1])
    low, high = tf.reduce_min(values), tf.reduce_max(values)
    spread = high > low
    counts = tf.histogram_fixed_width(values, tf.stack([low, tf.where(spread, high, low + 1)]),
                                      nbins=count)
    counts = tf.where(spread, tf.cast(counts, tf.float64),
                      tf.one_hot(count - 1, count, dtype=tf.float64)
                      * tf.cast(tf.size(values), tf.float64))
    edges = tf.linspace(low, tf.where(spread, high, low), count + 1)
    return tf.stack([edges[:-1], edges[1:], counts], axis=1)


def write_scalars(writer: tf.summary.SummaryWriter, step: tf.Tensor, accuracy: tf.Tensor,
                  cross_entropy: tf.Tensor, histograms: Sequence[tuple[str, tf.Tensor]] = ()
                  ) -> None:
    """One evaluation's accuracy and cross entropy (and histograms) at `step`; works eagerly
    and inside tf.function (tags at the root name scope, not under a loop's "while/")."""
    with writer.as_default(step=step), tf.compat.v1.name_scope(None):
        tf.summary.scalar("accuracy", accuracy)
        tf.summary.scalar("cross_entropy", cross_entropy)
        for name, values in histograms:
            histogram(name, values, step)


def write_path_summaries(summaries_dir: Optional[AnyPath], path: Sequence[PathPoint],
                         history: Sequence[EvalPoint]) -> None:
    """The lbfgs path as TensorBoard scalars: per penalty, at its count of L-BFGS iterations
    (`history`, aligned with `path`), the training and validation figures and the penalty."""
    if summaries_dir is None:
        return
    writers = {name: fresh_writer(as_path(summaries_dir) / name)
               for name in ("train", "validation")}
    for point, measured in zip(path, history):
        write_scalars(writers["train"], measured.step, measured.train_accuracy,
                      measured.cross_entropy)
        with writers["train"].as_default():
            tf.summary.scalar("l2", point.l2, measured.step)
        if measured.validation_accuracy is not None:
            write_scalars(writers["validation"], measured.step, measured.validation_accuracy,
                          measured.validation_cross_entropy)
    for writer in writers.values():
        writer.close()
