"""Out of accelerator memory -> a one-line UsageError that names the flag to lower.

Training and extraction run on a GPU when TensorFlow sees one; a batch too large for its memory
raises ResourceExhaustedError with a long allocator dump. Users need the flag, not the dump.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import tensorflow as tf

from retrainer.errors import UsageError


@contextlib.contextmanager
def explains_out_of_memory(doing: str, advice: str) -> Iterator[None]:
    """Turn an out-of-memory error raised inside the block into a UsageError (exit 2).

    Args:
        doing: what was running, e.g. "fine-tuning a batch of 100 images".
        advice: what to change, e.g. "lower --train_batch_size".

    Raises:
        UsageError: in place of tf.errors.ResourceExhaustedError.
    """
    try:
        yield
    except tf.errors.ResourceExhaustedError as error:
        device = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
        raise UsageError(f"Out of {device} memory while {doing}; {advice} and rerun "
                         "(vectors already cached are kept).") from error
