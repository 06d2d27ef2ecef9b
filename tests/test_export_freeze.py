"""Freezing a classifier for export: the direct GraphDef route gives the graph TensorFlow's public
`convert_variables_to_constants_v2` gives, and the same answers, without its second second."""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from retrainer.exports.classifier import Classifier
from retrainer.exports.graph import GraphExporter, frozen_graph_def
from retrainer.formats.graph_contract import metadata_path
from retrainer.training.head_layer import initial_head


def run(graph_def, images):
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run("final_result:0", {"Placeholder:0": images})


def test_direct_freeze_matches_tensorflows_public_route(tiny_extractor):
    head = initial_head(tiny_extractor.spec.vector_size, 3, seed=1)
    classifier = Classifier(tiny_extractor, head, ("a", "b", "c"), "final_result")
    concrete = classifier.classify.get_concrete_function()
    ours = frozen_graph_def(concrete)
    public = convert_variables_to_constants_v2(concrete).graph.as_graph_def()
    ops = {node.name: node.op for node in ours.node if node.op != "NoOp"}
    assert ops == {node.name: node.op for node in public.node if node.op != "NoOp"}
    assert not any("Variable" in op for op in ops.values())
    images = np.random.default_rng(0).random((4, 32, 32, 3), np.float32)
    np.testing.assert_array_equal(run(ours, images), run(public, images))


def test_the_frozen_graph_follows_the_variables(tiny_extractor):
    """Built once per state of the weights: a changed head gives a new graph."""
    head = initial_head(tiny_extractor.spec.vector_size, 3, seed=1)
    exporter = GraphExporter(Classifier(tiny_extractor, head, ("a", "b", "c"), "final_result"))
    first = exporter.frozen_graph_def()
    assert exporter.frozen_graph_def() is first
    for variable in exporter.classifier.head.variables:
        variable.assign(tf.random.stateless_normal(variable.shape, (1, 2)))
    second = exporter.frozen_graph_def()
    assert second is not first
    images = np.random.default_rng(1).random((2, 32, 32, 3), np.float32)
    assert not np.allclose(run(first, images), run(second, images))


def test_a_rerun_with_the_same_inputs_reuses_the_written_graph_untraced(tiny_extractor, tmp_path):
    """Same code, variables and metadata: the graph already at the path is the one they froze to
    (its SHA-256 recorded under the cache root), so nothing is traced; any change traces again."""
    head = initial_head(tiny_extractor.spec.vector_size, 3, seed=1)
    graph, cache = tmp_path / "out" / "graph.pb", tmp_path / "cache"
    graph.parent.mkdir()

    def exporter(labels=("a", "b", "c")):
        return GraphExporter(Classifier(tiny_extractor, head, labels, "final_result"), cache)

    first = exporter()
    first.write_graph(graph)
    made, sidecar = graph.read_bytes(), metadata_path(graph).read_text()
    assert first._traced is not None
    again = exporter()
    again.write_graph(graph)
    assert again._traced is None  # reused: neither traced nor frozen
    assert graph.read_bytes() == made and metadata_path(graph).read_text() == sidecar
    images = np.random.default_rng(2).random((2, 32, 32, 3), np.float32)
    np.testing.assert_array_equal(run(again.frozen_graph_def(), images),
                                  run(first.frozen_graph_def(), images))

    relabelled = exporter(("a", "b", "z"))  # other metadata
    relabelled.write_graph(graph)
    assert relabelled._traced is not None
    graph.write_bytes(made[:-1] + bytes([made[-1] ^ 1]))  # the file is not what was recorded
    damaged = exporter(("a", "b", "z"))
    damaged.write_graph(graph)
    assert damaged._traced is not None and graph.read_bytes() != made[:-1] + bytes([made[-1] ^ 1])
    before = run(damaged.frozen_graph_def(), images)
    head.weights = tf.random.stateless_normal(head.weights.shape, (3, 4)).numpy()  # another head
    head.biases = tf.random.stateless_normal(head.biases.shape, (3, 5)).numpy()
    retrained = exporter(("a", "b", "z"))
    retrained.write_graph(graph)
    assert retrained._traced is not None
    written = tf.compat.v1.GraphDef.FromString(graph.read_bytes())
    assert not np.allclose(run(written, images), before)
    for record in (cache / "frozen-graphs-v1").rglob("*.sha256"):  # damaged records: traced again
        record.write_bytes(b"not a digest")
    damaged_record = exporter(("a", "b", "z"))
    damaged_record.write_graph(graph)
    assert damaged_record._traced is not None


def test_an_unwritable_record_is_a_warning_not_a_failure(tiny_extractor, tmp_path, caplog):
    head = initial_head(tiny_extractor.spec.vector_size, 3, seed=1)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would be")
    exporter = GraphExporter(Classifier(tiny_extractor, head, ("a", "b"), "final_result"), blocked)
    with caplog.at_level(logging.WARNING):
        exporter.write_graph(tmp_path / "graph.pb")
    assert tf.compat.v1.GraphDef.FromString((tmp_path / "graph.pb").read_bytes()).node
    assert any("made again" in record.getMessage() for record in caplog.records)
