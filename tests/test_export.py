"""Exports: the frozen graph as TensorFlow's label_image.py loads it, labels, metadata, SavedModel."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from skimage import data as skimage_data

from retrainer.errors import UsageError
from retrainer.exports.classifier import Classifier
from retrainer.exports.graph import GraphExporter
from retrainer.exports.saved_model import write_saved_model
from retrainer.formats.graph_contract import metadata_path, write_labels
from retrainer.io.atomic import replace_directory
from retrainer.training.head_layer import initial_head

LABELS = ("cat", "espresso", "naïve label")


def label_image_py(graph_file: Path, image_file: Path, input_height: int, input_width: int,
                   input_mean: float = 0, input_std: float = 255, input_layer: str = "Placeholder",
                   output_layer: str = "final_result") -> tuple[np.ndarray, np.ndarray]:
    """What tensorflow/examples/label_image/label_image.py does, in TF1 graph mode.

    Returns:
        (the normalised input it fed, float32 [1, H, W, 3]; the output, float32 [1, C]).
    """
    graph = tf.Graph()
    graph_def = tf.compat.v1.GraphDef()
    with open(graph_file, "rb") as stream:
        graph_def.ParseFromString(stream.read())
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def)

    with tf.Graph().as_default():
        file_reader = tf.io.read_file(str(image_file), "file_reader")
        if str(image_file).endswith(".png"):
            image_reader = tf.image.decode_png(file_reader, channels=3, name="png_reader")
        else:
            image_reader = tf.image.decode_jpeg(file_reader, channels=3, name="jpeg_reader")
        float_caster = tf.cast(image_reader, tf.float32)
        dims_expander = tf.expand_dims(float_caster, 0)
        resized = tf.compat.v1.image.resize_bilinear(dims_expander, [input_height, input_width])
        normalized = tf.divide(tf.subtract(resized, [input_mean]), [input_std])
        with tf.compat.v1.Session() as session:
            fed = session.run(normalized)

    input_operation = graph.get_operation_by_name("import/" + input_layer)
    output_operation = graph.get_operation_by_name("import/" + output_layer)
    with tf.compat.v1.Session(graph=graph) as session:
        results = session.run(output_operation.outputs[0], {input_operation.outputs[0]: fed})
    return fed, results


@pytest.fixture
def classifier(tiny_extractor) -> Classifier:
    head = initial_head(16, len(LABELS), seed=0)
    head.weights = (tf.random.stateless_normal([16, len(LABELS)], seed=[1, 2]) * 3).numpy()
    head.biases = np.array([0.1, -0.2, 0.05], np.float32)
    return Classifier(tiny_extractor, head, LABELS, "final_result")


@pytest.fixture
def photos(tmp_path) -> list[Path]:
    """Real photos: scikit-image's cat (JPEG) and espresso (PNG)."""
    cat, coffee = tmp_path / "chelsea.jpg", tmp_path / "coffee.png"
    Image.fromarray(skimage_data.chelsea()).save(cat, quality=92)
    Image.fromarray(skimage_data.coffee()).save(coffee)
    return [cat, coffee]


def test_frozen_graph_runs_in_label_image_py_like_the_trained_model(tmp_path, classifier, photos):
    graph = tmp_path / "output_graph.pb"
    GraphExporter(classifier).write_graph(graph)
    for photo in photos:
        fed, probabilities = label_image_py(graph, photo, 32, 32)
        expected = classifier.head.probabilities(classifier.extractor(tf.constant(fed))).numpy()
        np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)
        assert probabilities.shape == (1, len(LABELS))
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)


def test_graph_contract_op_names_types_and_no_variables(classifier):
    graph_def = GraphExporter(classifier).frozen_graph_def()
    nodes = {node.name: node for node in graph_def.node}
    placeholder = nodes["Placeholder"]
    assert placeholder.op == "Placeholder"
    assert tf.dtypes.as_dtype(placeholder.attr["dtype"].type) == tf.float32
    assert [dim.size for dim in placeholder.attr["shape"].shape.dim] == [-1, 32, 32, 3]
    assert nodes["final_result"].op == "Identity"
    assert nodes[nodes["final_result"].input[0]].op == "Softmax"
    assert not [node.op for node in graph_def.node if "Variable" in node.op]


def test_custom_final_tensor_name_and_clashing_names(tmp_path, classifier, photos):
    renamed = Classifier(classifier.extractor, classifier.head, LABELS, "scores")
    graph = tmp_path / "renamed.pb"
    GraphExporter(renamed).write_graph(graph)
    _, probabilities = label_image_py(graph, photos[0], 32, 32, output_layer="scores")
    assert probabilities.shape == (1, 3)
    assert json.loads(metadata_path(graph).read_text())["output_layer"] == "scores"

    clashing = Classifier(classifier.extractor, classifier.head, LABELS, "Relu")  # a tiny_test op
    with pytest.raises(UsageError, match="--final_tensor_name 'Relu' clashes"):
        GraphExporter(clashing)


def test_metadata_sidecar_contract(tmp_path, classifier):
    graph = tmp_path / "out.pb"
    sidecar = GraphExporter(classifier).write_graph(graph, step=30)
    assert sidecar == tmp_path / "out.pb.meta.json"
    assert json.loads(sidecar.read_text(encoding="utf-8")) == {
        "format": "retrainer-graph/1",
        "input_layer": "Placeholder",
        "output_layer": "final_result",
        "input_height": 32,
        "input_width": 32,
        "input_mean": 0.0,
        "input_std": 255.0,
        "labels": list(LABELS),
        "extractor": {"name": "tiny_test", "id": "tiny_test-v1"},
        "step": 30,
        "graph_sha256": hashlib.sha256(graph.read_bytes()).hexdigest(),
    }


def test_labels_file_one_per_line_in_index_order(tmp_path):
    path = tmp_path / "labels.txt"
    write_labels(path, LABELS)
    assert path.read_bytes() == "cat\nespresso\nnaïve label\n".encode("utf-8")


def test_rewriting_exports_leaves_no_temp_files(tmp_path, classifier):
    exporter = GraphExporter(classifier)
    graph = tmp_path / "graph.pb"
    exporter.write_graph(graph)
    first = graph.read_bytes()
    classifier.head.biases.assign([5.0, 0.0, 0.0])
    exporter.write_graph(graph)
    assert graph.read_bytes() != first
    assert sorted(path.name for path in tmp_path.iterdir()) == ["graph.pb", "graph.pb.meta.json"]


def test_saved_model_serves_probabilities_and_carries_labels(tmp_path, classifier):
    directory = tmp_path / "saved_model"
    write_saved_model(classifier, directory)
    write_saved_model(classifier, directory)  # replacing an earlier SavedModel works
    assert sorted(path.name for path in tmp_path.iterdir()) == ["saved_model"]
    loaded = tf.saved_model.load(str(directory))
    images = tf.constant(np.random.default_rng(0).random((2, 32, 32, 3)), tf.float32)
    served = loaded.signatures["serving_default"](images=images)["probabilities"].numpy()
    expected = classifier.head.probabilities(classifier.extractor(images)).numpy()
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
    assert [label.decode() for label in loaded.labels.numpy()] == list(LABELS)
    assert (directory / "assets" / "labels.txt").read_text(encoding="utf-8") == "".join(
        f"{label}\n" for label in LABELS)


def test_directory_replacement_keeps_the_old_one_when_writing_fails(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")

    def fail(staging: Path) -> None:
        (staging / "half.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_directory(target, fail)
    assert os.listdir(tmp_path) == ["model"]
    assert (target / "old.txt").read_text() == "old"
