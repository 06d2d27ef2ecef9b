"""Class activation maps: for a retrained linear head the report's heat maps are CAM, which must
be the very maps Grad-CAM gives, on real photographs through real exported graphs."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from retrainer.engines.factory import create_engine
from retrainer.engines.int8 import kept_map_model
from retrainer.explain.cam import class_activation_maps
from retrainer.explain.gradcam import GradCam
from retrainer.explain.lite_cam import LiteCam
from retrainer.exports.classifier import Classifier
from retrainer.exports.graph import GraphExporter
from retrainer.extractors import create_extractor
from retrainer.formats.tflite import BatchInterpreter, pooled_map_model
from retrainer.training.head_layer import initial_head
from retrainer.training.head_types import Head
from retrainer.training.objectives import SIGMOID, SOFTMAX
from tests.fixtures_photos import PHOTOS, photo

SIZE = 128  # a 4 x 4 last map


@pytest.fixture(scope="module")
def extractor():
    return create_extractor("efficientnet_lite0", SIZE)  # the real weights


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """float32 [N, SIZE, SIZE, 3] in [0, 1]: scikit-image's photographs, squared."""
    return np.stack([np.asarray(photo(name).resize((SIZE, SIZE)), np.float32) / 255.0
                     for name in PHOTOS])


def frozen_graph(extractor, tmp_path, tta: str, objective=SOFTMAX, classes: int = 5):
    path = tmp_path / f"{tta}-{objective.name}.pb"
    head = initial_head(extractor.spec.vector_size, classes, seed=3, objective=objective)
    labels = tuple(f"class{index}" for index in range(classes))
    GraphExporter(Classifier(extractor, head, labels, "final_result", tta=tta)).write_graph(path)
    return tf.compat.v1.GraphDef.FromString(path.read_bytes())


@pytest.mark.parametrize(("tta", "objective"), [("none", SOFTMAX), ("flip", SOFTMAX),
                                                ("none", SIGMOID)])
def test_cam_equals_grad_cam_on_photographs(extractor, photos, tmp_path, tta, objective):
    graph_def = frozen_graph(extractor, tmp_path, tta, objective)
    gradcam = GradCam.from_graph_def(graph_def, "Placeholder:0", "final_result:0", "graph")
    cam = class_activation_maps(graph_def, "Placeholder:0", "final_result:0")
    assert cam is not None
    # A --tta flip graph's extractor is fed the images alone: no mirror half computed.
    assert cam.feed.name == ("tta_flip/concat:0" if tta == "flip" else "Placeholder:0")
    top = gradcam.explain(photos)
    other = (top.classes + 1) % 5  # a class the graph did not choose, given to both
    given = gradcam.explain(photos, other)
    gradcam.close()
    assert top.maps.shape == (len(photos), 4, 4) and np.array_equal(given.classes, other)
    assert not np.allclose(top.maps, given.maps, atol=1e-2)  # the class matters
    for explained, classes in ((top, top.classes), (given, other)):
        maps = cam.maps(photos, classes)
        assert maps.shape == explained.maps.shape and maps.dtype == np.float32
        np.testing.assert_allclose(maps, explained.maps, atol=1e-5)
        assert (maps.reshape(len(maps), -1).max(axis=1) == 1.0).all()
    cam.close()


def test_graphs_where_cam_differs_from_grad_cam_get_none(extractor, tmp_path):
    """A map taken before the last block (a 1 x 1 last map at 32 pixels) or a head that is not
    linear in the pooled map: CAM is not Grad-CAM there, so none is offered."""
    small = create_extractor("efficientnet_lite0", 32)
    head = initial_head(small.spec.vector_size, 3, seed=1)
    path = tmp_path / "small.pb"
    GraphExporter(Classifier(small, head, ("a", "b", "c"), "final_result")).write_graph(path)
    graph_def = tf.compat.v1.GraphDef.FromString(path.read_bytes())
    assert class_activation_maps(graph_def, "Placeholder:0", "final_result:0") is None

    # pooled map -> ReLU(x W1) W2 -> softmax (W1 as wide as the map: only the walk refuses it)
    graph = tf.Graph()
    rng = np.random.default_rng(0)
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, 16, 16, 3], name="Placeholder")
        kernel = tf.constant(rng.normal(size=(3, 3, 3, 8)).astype(np.float32))
        feature_map = tf.nn.relu6(tf.nn.conv2d(images, kernel, 2, "SAME"))
        pooled = tf.reduce_mean(feature_map, axis=[1, 2])
        hidden = tf.nn.relu(tf.matmul(pooled, tf.constant(rng.normal(size=(8, 8)), tf.float32)))
        logits = tf.matmul(hidden, tf.constant(rng.normal(size=(8, 3)), tf.float32))
        tf.nn.softmax(logits, name="final_result")
    assert class_activation_maps(graph.as_graph_def(), "Placeholder:0", "final_result:0") is None


def test_a_damaged_kept_map_model_is_not_used(tmp_path, monkeypatch):
    """The map model is kept sealed in the user's cache: read back as written, and a truncated
    one reads as absent (the next run converts it again) though a file is still there."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cam = LiteCam("efficientnet_lite0", (SIZE, SIZE), np.zeros((8, 2), np.float32))
    assert not cam.kept() and cam.model() is None
    cam.remember(b"TFL3 model bytes")
    assert cam.kept() and cam.model() == b"TFL3 model bytes"
    (path,) = (tmp_path / "retrainer").glob("feature-map-models-v1/*/*.tflite")
    path.write_bytes(path.read_bytes()[:-1])
    assert cam.kept() and cam.model() is None
    assert cam.maps([np.zeros((SIZE, SIZE, 3), np.uint8)], np.zeros(1, int)) is None


def test_an_int8_runs_maps_come_from_its_engine_and_match_the_float32_graphs(
        extractor, photos, tmp_path, monkeypatch):
    """With the int8 engine, the report's maps are its own model's last map (before the pooling
    that gives the head's vectors): that map pooled is the engine's vector, and the heat maps
    are the float32 graph's CAM to within int8's rounding (same head, real photographs)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    engine = create_engine(extractor, "int8")
    pixels = np.round(photos * 255).astype(np.uint8)
    vectors = engine(pixels)
    assert engine.model_path is not None
    map_model = kept_map_model(engine.model_path)
    assert map_model is not None
    feature_map = BatchInterpreter(map_model, 1)(pixels)
    assert feature_map.shape == (len(photos), 4, 4, 1280) and feature_map.dtype == np.float32
    # the engine's vector is this map's mean, requantized (int8 steps of ~0.02)
    np.testing.assert_allclose(feature_map.mean(axis=(1, 2)), vectors, atol=0.03)

    reference = create_engine(extractor, "float32")(pixels)  # a head that tells photos apart:
    weights = (reference - reference.mean(axis=0)).T[:, :5]  # each of five photos' direction
    head = Head(np.ascontiguousarray(weights), np.zeros(5, np.float32), SOFTMAX)
    path = tmp_path / "graph.pb"
    labels = tuple(f"class{index}" for index in range(5))
    GraphExporter(Classifier(extractor, head, labels, "final_result")).write_graph(path)
    cam = class_activation_maps(tf.compat.v1.GraphDef.FromString(path.read_bytes()),
                                "Placeholder:0", "final_result:0")
    assert cam is not None
    classes = np.arange(len(photos)) % 5
    expected = cam.maps(photos, classes)
    cam.close()
    lite = LiteCam(extractor.spec.id, (SIZE, SIZE), weights, engine.model_path)
    assert lite.kept() and lite.source == "int8 engine"
    maps = np.stack(lite.maps(list(pixels), classes))
    assert maps.shape == expected.shape
    correlations = [np.corrcoef(got.ravel(), want.ravel())[0, 1]
                    for got, want in zip(maps, expected)]
    # measured: correlations 0.965-1.000 (median 0.998), mean |difference| 0.019 of [0, 1]
    assert min(correlations) > 0.9 and np.median(correlations) > 0.98, correlations
    assert np.abs(maps - expected).mean() < 0.05


def test_a_map_model_is_made_only_where_the_output_is_the_last_maps_mean():
    """The map is made the output only where the model's output is its last map's spatial mean
    (at most requantized): any other op after the pooling (here a scale and shift) would make
    the map's class activation another than the graph's, so none is offered."""
    kernel = tf.constant(np.random.default_rng(0).normal(size=(3, 3, 3, 4)), tf.float32)

    def converted(after_pooling) -> bytes:
        function = tf.function(
            lambda images: after_pooling(tf.reduce_mean(
                tf.nn.relu6(tf.nn.conv2d(images, kernel, 2, "SAME")), axis=[1, 2])),
            input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [function.get_concrete_function()])
        return bytes(converter.convert())

    images = np.random.default_rng(1).random((2, 8, 8, 3)).astype(np.float32)
    pooled = converted(lambda vector: vector)
    feature_map = BatchInterpreter(pooled_map_model(pooled))(images)
    assert feature_map.shape == (2, 4, 4, 4)
    np.testing.assert_allclose(feature_map.mean(axis=(1, 2)), BatchInterpreter(pooled)(images),
                               rtol=1e-5, atol=1e-6)
    assert pooled_map_model(converted(lambda vector: vector * 2.0 + 1.0)) is None
