"""Tiny stand-in hub modules (TF2 SavedModel, TF1 Hub format) and a local module server for tests.

Every module computes `mean over pixels of a 1x1 convolution` = images.mean((1, 2)) @ kernel, so a
test can compute the expected vectors with numpy (`expected_features`) without the code under test.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import tarfile
import threading
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pytest
import tensorflow as tf

TF1_HUB_MARKER = b"\x08\x03"  # tfhub_module.pb: a ModuleDef proto with format = FORMAT_V3


def module_kernel(vector_size: int = 8, seed: int = 0) -> np.ndarray:
    """float32 [3, vector_size]: the module's 1x1 convolution kernel."""
    return np.random.default_rng(seed).normal(size=(3, vector_size)).astype(np.float32)


def expected_features(images: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """What every stand-in module returns: float32 [N, D] for images float32 [N, H, W, 3]."""
    return images.mean(axis=(1, 2)) @ kernel


class _ConvPoolModule(tf.Module):
    def __init__(self, kernel: np.ndarray) -> None:
        super().__init__()
        self.kernel = tf.Variable(kernel[np.newaxis, np.newaxis], name="kernel")

    def features(self, images: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(tf.nn.conv2d(images, self.kernel, 1, "SAME"), axis=[1, 2])


def save_tf2_module(
    path: Path, kernel: np.ndarray, size: Optional[int] = 32, style: str = "call"
) -> Path:
    """Write a TF2 SavedModel feature-vector module; `size=None` accepts any image size.

    Styles: "call" (a reusable SavedModel's `__call__`), "call_training" (`__call__(images,
    training)` where training=True doubles the output, as Keras-made modules misbehave in training
    mode), "signature" (only a serving signature with a named output), "feature_map" (returns
    [N, H, W, D], not a vector), "not_image" (takes [N, 3] vectors).
    """
    module = _ConvPoolModule(kernel)
    images = tf.TensorSpec([None, size, size, 3], tf.float32, name="images")
    signatures = None
    if style == "call":
        module.__call__ = tf.function(module.features, input_signature=[images])
    elif style == "call_training":
        module.__call__ = tf.function(
            lambda images, training=False: module.features(images) * (2.0 if training else 1.0)
        )
        for training in (True, False):
            module.__call__.get_concrete_function(images, training=training)
    elif style == "signature":
        serve = tf.function(lambda images: {"feature_vector": module.features(images)})
        signatures = {"serving_default": serve.get_concrete_function(images)}
    elif style == "feature_map":
        module.__call__ = tf.function(
            lambda images: tf.nn.conv2d(images, module.kernel, 1, "SAME"), input_signature=[images]
        )
    elif style == "not_image":
        module.__call__ = tf.function(
            lambda vectors: vectors @ module.kernel[0, 0],
            input_signature=[tf.TensorSpec([None, 3], tf.float32)],
        )
    else:
        raise ValueError(f"unknown style {style!r}")
    tf.saved_model.save(module, str(path), signatures=signatures)
    return path


def save_tf1_hub_module(path: Path, kernel: np.ndarray, size: int = 32) -> Path:
    """Write a module in the deprecated TF1 Hub format, as `hub.Module` exporters did.

    tensorflow_hub 0.16 can no longer create these (hub.Module/create_module_spec are gone), so this
    writes the format directly: a TF1 SavedModel under the empty tag set with `image_feature_vector`
    and `default` signatures (input "images", output "default"), plus the `tfhub_module.pb` marker.
    """
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, size, size, 3], name="images")
        weights = tf.compat.v1.get_variable("kernel", initializer=kernel[np.newaxis, np.newaxis])
        features = tf.reduce_mean(tf.nn.conv2d(images, weights, 1, "SAME"), axis=[1, 2])
        signature = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
            inputs={"images": tf.compat.v1.saved_model.utils.build_tensor_info(images)},
            outputs={"default": tf.compat.v1.saved_model.utils.build_tensor_info(features)},
        )
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            builder = tf.compat.v1.saved_model.Builder(str(path))
            builder.add_meta_graph_and_variables(
                session, [], signature_def_map={"image_feature_vector": signature, "default": signature}
            )
            builder.save()
    (path / "tfhub_module.pb").write_bytes(TF1_HUB_MARKER)
    return path


@contextlib.contextmanager
def serve_module_archive(module_dir: Path) -> Iterator[tuple[str, list[str]]]:
    """Serve `module_dir` as a .tar.gz at http://127.0.0.1:<port>/ like tfhub.dev's compressed format.

    Yields:
        (base URL, list of request paths received so far).
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(module_dir, arcname=".")
    payload = buffer.getvalue()
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-tar")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def tiny_hub_module(tmp_path) -> Path:
    """A TF2 feature-vector SavedModel: 32x32 input, D=8 (kernel `module_kernel()`)."""
    return save_tf2_module(tmp_path / "tiny_hub_module", module_kernel())
