"""The head's checkpoint (retrain.py's --checkpoint_path): TensorFlow's checkpoint format, so
`tf.train.Checkpoint(head=...)` restores it.

Writing it needs TensorFlow, so a rerun that trained the same head (same weights, same step)
keeps the files already there when a record under --bottleneck_dir says those inputs wrote them
(`cache.memo.KeptOutputs`).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

import numpy as np

from retrainer.cache.layout import checkpoint_record_path
from retrainer.cache.memo import KeptOutputs, arrays_digest, memo_key
from retrainer.io.host import tensorflow_version
from retrainer.io.storage import is_url

# What tf.train.Checkpoint.write(prefix) makes (one data shard: one device).
CHECKPOINT_SUFFIXES = (".index", ".data-00000-of-00001")


def write_checkpoint(weights: Any, biases: Any, steps: int, path: os.PathLike[str] | str,
                     cache_root: Optional[os.PathLike[str] | str] = None,
                     load_tensorflow: Callable[[], None] = lambda: None) -> None:
    """Write the head's variables `final_weights` [D, C] and `final_biases` [C] and the step
    count as a TensorFlow checkpoint at `path` (a prefix), unless kept (module docstring);
    `load_tensorflow()` is called before writing."""
    files = [f"{os.fspath(path)}{suffix}" for suffix in CHECKPOINT_SUFFIXES]
    kept = KeptOutputs(None if is_url(path) else cache_root, checkpoint_record_path)
    values = (np.asarray(array, np.float32) for array in (weights, biases))
    key = memo_key("checkpoint", tensorflow_version(), arrays_digest(values), int(steps), files)
    if kept.read(key, files) is not None:
        return
    load_tensorflow()
    import tensorflow as tf

    module = tf.Module(name="head")
    module.weights = tf.Variable(np.asarray(weights, np.float32), name="final_weights")
    module.biases = tf.Variable(np.asarray(biases, np.float32), name="final_biases")
    tf.train.Checkpoint(head=module, step=tf.Variable(int(steps), dtype=tf.int64)).write(
        os.fspath(path))
    if not is_url(path):
        contents = []
        for name in files:
            with open(name, "rb") as stream:
                contents.append(stream.read())
        kept.remember(key, contents)
