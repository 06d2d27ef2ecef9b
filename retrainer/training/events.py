"""TensorBoard event files written without TensorFlow: the lbfgs path's scalars and the report's
confusion-matrix image.

An event file is a TFRecord file of `Event` protos; TensorBoard's own package has the protos, the
record writer and the plugins' metadata, and none of them needs TensorFlow. The values are those
`tf.summary.scalar` and `tf.summary.image` write (the same tags, plugins and tensor layouts), so
TensorBoard shows them alike; a run whose head is fitted in numpy then needs no TensorFlow for
its summaries. Remote folders (URLs) go through `tf.summary` (TensorFlow's file systems).
"""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard.util import tensor_util

from retrainer.io.storage import AnyPath, as_path, is_url

if TYPE_CHECKING:  # the records' types; their modules load TensorFlow
    from retrainer.training.convex import PathPoint
    from retrainer.training.head_types import EvalPoint

_SCALAR = scalar_metadata.create_summary_metadata(display_name=None, description=None)
_IMAGE = image_metadata.create_summary_metadata(display_name=None, description=None)


class EventFile:
    """One new event file in `folder` (made if missing), written when closed; `replace`: the
    folder's previous event files are deleted then (retrain.py emptied summaries_dir)."""

    def __init__(self, folder: AnyPath, replace: bool = True) -> None:
        self.folder = as_path(folder)
        self.replace = replace
        self._events: list[event_pb2.Event] = [
            event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")]

    def scalar(self, tag: str, value: Optional[float], step: int) -> None:
        """A float32 scalar, as `tf.summary.scalar` stores it (None: not measured, nothing)."""
        if value is None:
            return
        self._add(step, summary_pb2.Summary.Value(
            tag=tag, metadata=_SCALAR, tensor=tensor_util.make_tensor_proto(np.float32(value))))

    def image(self, tag: str, png: bytes, width: int, height: int, step: int) -> None:
        """One PNG, as `tf.summary.image` stores it: string [width, height, png]."""
        tensor = tensor_util.make_tensor_proto(
            np.array([str(width).encode(), str(height).encode(), png], dtype=object))
        self._add(step, summary_pb2.Summary.Value(tag=tag, metadata=_IMAGE, tensor=tensor))

    def _add(self, step: int, value: summary_pb2.Summary.Value) -> None:
        self._events.append(event_pb2.Event(wall_time=time.time(), step=int(step),
                                            summary=summary_pb2.Summary(value=[value])))

    def close(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for old_events in self.folder.glob("events.out.tfevents.*") if self.replace else ():
            old_events.unlink()
        stem = (f"events.out.tfevents.{int(self._events[0].wall_time)}."
                f"{socket.gethostname()}.{os.getpid()}")
        number = 0
        while (self.folder / f"{stem}.{number}.v2").exists():  # another file of this second
            number += 1
        with open(self.folder / f"{stem}.{number}.v2", "wb") as stream:
            records = RecordWriter(stream)
            for event in self._events:
                records.write(event.SerializeToString())


def write_path_summaries(summaries_dir: Optional[AnyPath], path: Sequence[PathPoint],
                         history: Sequence[EvalPoint]) -> None:
    """The lbfgs path as TensorBoard scalars: per penalty, at its count of L-BFGS iterations
    (`history`, aligned with `path`), the training and validation figures and the penalty."""
    if summaries_dir is None:
        return
    if is_url(summaries_dir):
        from retrainer.training.summaries import write_path_summaries as through_tensorflow

        through_tensorflow(summaries_dir, path, history)
        return
    train, validation = (EventFile(as_path(summaries_dir) / name)
                         for name in ("train", "validation"))
    for point, measured in zip(path, history):
        train.scalar("accuracy", measured.train_accuracy, measured.step)
        train.scalar("cross_entropy", measured.cross_entropy, measured.step)
        train.scalar("l2", point.l2, measured.step)
        if measured.validation_accuracy is not None:
            validation.scalar("accuracy", measured.validation_accuracy, measured.step)
            validation.scalar("cross_entropy", measured.validation_cross_entropy,
                              measured.step)
    train.close()
    validation.close()
