"""The head's checkpoint (retrain.py's --checkpoint_path): TensorFlow's checkpoint format, so
`tf.train.Checkpoint(head=...)` restores it.

Writing it with TensorFlow needs TensorFlow's import, so a rerun that trained the same head (same
weights, same step) keeps the files already there when a record under --bottleneck_dir says those
inputs wrote them (`cache.memo.KeptOutputs`), and a head of shapes this machine wrote before is
written from that checkpoint's template (`formats.checkpoint_template`, in the user's cache).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

import numpy as np

from retrainer.cache.layout import checkpoint_record_path, checkpoint_template_path
from retrainer.cache.memo import KeptOutputs, Memo, arrays_digest, memo_key
from retrainer.formats.checkpoint_template import fill_template, make_template
from retrainer.io.atomic import write_bytes_atomically
from retrainer.io.host import tensorflow_version, user_cache_dir
from retrainer.io.storage import is_url

# What tf.train.Checkpoint.write(prefix) makes (one data shard: one device).
CHECKPOINT_SUFFIXES = (".index", ".data-00000-of-00001")
# The checkpoint's keys of the head's weights and biases and of the step count.
_WEIGHTS = "head/weights/.ATTRIBUTES/VARIABLE_VALUE"
_BIASES = "head/biases/.ATTRIBUTES/VARIABLE_VALUE"
_STEP = "step/.ATTRIBUTES/VARIABLE_VALUE"
_TEMPLATE_KIND = "checkpoint template v2"  # how templates are sealed in the user's cache


def write_checkpoint(weights: Any, biases: Any, steps: int, path: os.PathLike[str] | str,
                     cache_root: Optional[os.PathLike[str] | str] = None,
                     load_tensorflow: Callable[[], None] = lambda: None) -> None:
    """Write the head's variables `final_weights` [D, C] and `final_biases` [C] and the step
    count as a TensorFlow checkpoint at `path` (a prefix), unless kept (module docstring);
    `load_tensorflow()` is called before writing with TensorFlow."""
    files = [f"{os.fspath(path)}{suffix}" for suffix in CHECKPOINT_SUFFIXES]
    kept = KeptOutputs(None if is_url(path) else cache_root, checkpoint_record_path)
    weights, biases = (np.asarray(array, np.float32) for array in (weights, biases))
    key = memo_key("checkpoint", tensorflow_version(), arrays_digest((weights, biases)),
                   int(steps), files)
    if kept.read(key, files) is not None:
        return
    tensors = {_WEIGHTS: weights, _BIASES: biases, _STEP: np.int64(steps)}
    templates = Memo(None if is_url(path) else user_cache_dir(), checkpoint_template_path)
    template_key = _template_key(*weights.shape)
    template = templates.read_sealed(template_key, _TEMPLATE_KIND)
    written = None if template is None else fill_template(template, tensors)
    if written is not None:
        os.makedirs(os.path.dirname(files[0]) or ".", exist_ok=True)
        for name, content in reversed(list(zip(files, written))):  # the data, then the index
            write_bytes_atomically(name, content)
    else:
        _write_with_tensorflow(weights, biases, steps, path, load_tensorflow)
        if is_url(path):
            return
        contents = []
        for name in files:
            with open(name, "rb") as stream:
                contents.append(stream.read())
        template = make_template(contents[0], contents[1], tensors)
        if template is not None:
            templates.write_sealed(template_key, _TEMPLATE_KIND, *template)
        written = (contents[0], contents[1])
    kept.remember(key, list(written))


def written_without_tensorflow(vector_size: int, classes: int) -> bool:
    """Whether this machine keeps the template of a head checkpoint of these sizes (a new
    checkpoint of them then needs no TensorFlow)."""
    return Memo(user_cache_dir(), checkpoint_template_path).holds(
        _template_key(vector_size, classes))


def _template_key(vector_size: int, classes: int) -> str:
    return memo_key("checkpoint template", tensorflow_version(), vector_size, classes)


def _write_with_tensorflow(weights: np.ndarray, biases: np.ndarray, steps: int,
                           path: os.PathLike[str] | str,
                           load_tensorflow: Callable[[], None]) -> None:
    load_tensorflow()
    import tensorflow as tf

    module = tf.Module(name="head")
    module.weights = tf.Variable(weights, name="final_weights")
    module.biases = tf.Variable(biases, name="final_biases")
    tf.train.Checkpoint(head=module, step=tf.Variable(int(steps), dtype=tf.int64)).write(
        os.fspath(path))
