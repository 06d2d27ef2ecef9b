"""The head's checkpoint written without TensorFlow from a kept template
(formats/checkpoint_template.py): the files TensorFlow writes, which TensorFlow restores."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrainer.training.checkpoint import CHECKPOINT_SUFFIXES, write_checkpoint


def tensorflows_files(weights, biases, steps, prefix) -> list[bytes]:
    module = tf.Module(name="head")
    module.weights = tf.Variable(weights, name="final_weights")
    module.biases = tf.Variable(biases, name="final_biases")
    tf.train.Checkpoint(head=module, step=tf.Variable(steps, dtype=tf.int64)).write(str(prefix))
    return [(prefix.parent / f"{prefix.name}{suffix}").read_bytes() for suffix in CHECKPOINT_SUFFIXES]


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "retrainer"


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(classes=st.integers(2, 30), dimensions=st.sampled_from([8, 1280]),
       steps=st.integers(0, 2**40), seed=st.integers(0, 2**16))
def test_a_checkpoint_from_the_template_is_tensorflows(tmp_path, cache_home, classes, dimensions,
                                                       steps, seed):
    rng = np.random.default_rng(seed)
    shapes = ((dimensions, classes), (classes,))
    first = [rng.normal(size=shape).astype(np.float32) for shape in shapes]
    second = [rng.normal(size=shape).astype(np.float32) for shape in shapes]
    folder = tmp_path / f"run{seed}-{classes}-{dimensions}"
    write_checkpoint(*first, 3, folder / "a" / "ckpt")  # with TensorFlow: keeps the template
    write_checkpoint(*second, steps, folder / "b" / "ckpt")  # from the template
    ours = [(folder / "b" / f"ckpt{suffix}").read_bytes() for suffix in CHECKPOINT_SUFFIXES]
    assert ours == tensorflows_files(*second, steps, folder / "tf" / "ckpt")
    restored = tf.Module()
    restored.weights = tf.Variable(tf.zeros(shapes[0]))
    restored.biases = tf.Variable(tf.zeros(shapes[1]))
    step = tf.Variable(0, dtype=tf.int64)
    tf.train.Checkpoint(head=restored, step=step).read(str(folder / "b" / "ckpt")).assert_consumed()
    np.testing.assert_array_equal(restored.weights.numpy(), second[0])
    np.testing.assert_array_equal(restored.biases.numpy(), second[1])
    assert int(step.numpy()) == steps


def test_a_damaged_template_falls_back_to_tensorflow(tmp_path, cache_home):
    weights, biases = np.ones((4, 3), np.float32), np.arange(3, dtype=np.float32)
    write_checkpoint(weights, biases, 1, tmp_path / "a" / "ckpt")
    (template,) = cache_home.glob("checkpoint-templates-v1/*/*.ckpt")
    template.write_bytes(template.read_bytes()[:-1] + b"\0")
    write_checkpoint(weights * 2, biases, 5, tmp_path / "b" / "ckpt")
    ours = [(tmp_path / "b" / f"ckpt{suffix}").read_bytes() for suffix in CHECKPOINT_SUFFIXES]
    assert ours == tensorflows_files(weights * 2, biases, 5, tmp_path / "tf" / "ckpt")
    assert template.read_bytes()[-1:] != b"\0"  # written again by the fallback
