"""Frozen graphs written without TensorFlow from a kept template (formats/graph_template.py): the
bytes TensorFlow would trace and freeze for the same head, for any class count, with and without
the --tta flip mirror and the novelty output; damaged or absent templates fall back to tracing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrainer.config import RetrainConfig
from retrainer.data.decoding import load_image
from retrainer.exports.classifier import Classifier
from retrainer.exports.graph import GraphExporter
from retrainer.exports.options import FLIP, NO_TTA
from retrainer.exports.run import Exporter
from retrainer.formats.graph_contract import metadata_path
from retrainer.formats.graph_template import (
    BIASES,
    NOVELTY_REFERENCES,
    WEIGHTS,
    fill_template,
    make_template,
)
from retrainer.training.head_types import Head
from retrainer.training.novelty import Novelty


def head_of(vector_size: int, classes: int, seed: int) -> Head:
    rng = np.random.default_rng(seed)
    return Head(rng.normal(size=(vector_size, classes)).astype(np.float32),
                rng.normal(size=classes).astype(np.float32))


def novelty_of(vector_size: int, references: int, seed: int) -> Novelty:
    rows = np.random.default_rng(seed).normal(size=(references, vector_size)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return Novelty(rows, 2, 0.3, 0.95, "validation", 10)


def traced(extractor, head, tta, novelty=None) -> bytes:
    classifier = Classifier(extractor, head, [str(c) for c in range(head.biases.size)],
                            "final_result", novelty, tta=tta)
    return GraphExporter(classifier).frozen_graph_bytes()


def arrays_of(head, novelty=None) -> dict[str, np.ndarray]:
    arrays = {WEIGHTS: head.weights, BIASES: head.biases}
    if novelty is not None:
        arrays[NOVELTY_REFERENCES] = novelty.references
    return arrays


def run(graph: bytes, images: np.ndarray, output: str = "final_result:0") -> np.ndarray:
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph)
    loaded = tf.Graph()
    with loaded.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=loaded) as session:
        return session.run(output, {"Placeholder:0": images})


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(classes=st.integers(2, 12), tta=st.sampled_from([NO_TTA, FLIP]), novelty=st.booleans(),
       seed=st.integers(0, 2**16))
def test_a_filled_template_is_the_traced_graph_byte_for_byte(tiny_extractor, classes, tta,
                                                              novelty, seed):
    """The template of one head's graph, filled with another head (any class count, another
    number of novelty references), is exactly what TensorFlow traces for that head."""
    size = tiny_extractor.spec.vector_size
    first, second = head_of(size, 3, seed), head_of(size, classes, seed + 1)
    novelties = (novelty_of(size, 7, seed), novelty_of(size, 5, seed + 1)) if novelty else (None,) * 2
    template = make_template(traced(tiny_extractor, first, tta, novelties[0]),
                             arrays_of(first, novelties[0]))
    assert template is not None
    assert fill_template(template, arrays_of(second, novelties[1])) == traced(
        tiny_extractor, second, tta, novelties[1])


def test_a_filled_graph_answers_as_the_traced_one_on_real_images(tiny_extractor,
                                                                 fashion_mnist_dir):
    size = tiny_extractor.spec.vector_size
    first, second = head_of(size, 4, 0), head_of(size, 10, 1)
    template = make_template(traced(tiny_extractor, first, FLIP), arrays_of(first))
    filled = fill_template(template, arrays_of(second))
    images = np.stack([load_image(path, (32, 32)) for path in
                       sorted(fashion_mnist_dir.rglob("*.png"))[:12]]).astype(np.float32) / 255
    expected = run(traced(tiny_extractor, second, FLIP), images)
    np.testing.assert_allclose(run(filled, images), expected, atol=1e-6)
    features = tiny_extractor(images[:, :, ::-1]).numpy() + tiny_extractor(images).numpy()
    np.testing.assert_allclose(expected, tf.nn.softmax(features / 2 @ second.weights
                                                       + second.biases).numpy(), atol=1e-5)


def test_templates_of_other_roles_are_refused(tiny_extractor):
    """(A damaged template is never read: tests/test_memo.py checks the seal it is kept in.)"""
    size = tiny_extractor.spec.vector_size
    head = head_of(size, 3, 0)
    template = make_template(traced(tiny_extractor, head, NO_TTA), arrays_of(head))
    assert template is not None and fill_template(template, arrays_of(head)) is not None
    assert fill_template(template, arrays_of(head, novelty_of(size, 3, 0))) is None  # other roles
    assert make_template(traced(tiny_extractor, head, NO_TTA), arrays_of(head_of(size, 3, 9))) \
        is None  # the arrays are not in the graph


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "retrainer"


def test_the_exporter_writes_from_the_template_untraced_and_traces_without_one(
        tiny_extractor, tmp_path, cache_home):
    """First run traces and keeps the template; a new head into a new folder and cache is
    written without the extractor (no tracing); a damaged template costs a tracing again."""
    built = []

    def extractor():
        built.append(1)
        return tiny_extractor

    def export(run: str, head: Head) -> tuple[bytes, dict]:
        folder = tmp_path / run
        folder.mkdir()
        config = RetrainConfig(image_dir=str(tmp_path), output_graph=folder / "graph.pb",
                               output_labels=folder / "labels.txt", tta=FLIP)
        labels = tuple(f"class {c}" for c in range(head.biases.size))
        exporter = Exporter(config.exports, tiny_extractor.spec, extractor, labels,
                            folder / "intermediate", folder / "cache")
        exporter.tta = FLIP
        exporter.write_all(head, [], [], fine_tuned=False)
        graph = (folder / "graph.pb").read_bytes()
        assert exporter.exported_graph(head) == graph  # what the heat maps explain
        return graph, json.loads(metadata_path(folder / "graph.pb").read_text())

    size = tiny_extractor.spec.vector_size
    _, first_sidecar = export("first", head_of(size, 3, 0))
    assert len(built) == 1 and list(cache_home.glob("graph-templates-v1/*/*.pb"))
    head = head_of(size, 5, 1)
    graph, sidecar = export("second", head)
    assert len(built) == 1  # not traced
    assert graph == traced(tiny_extractor, head, FLIP)
    assert sidecar["labels"] == [f"class {c}" for c in range(5)]
    assert {key: value for key, value in sidecar.items() if key not in ("labels", "graph_sha256")} \
        == {key: value for key, value in first_sidecar.items()
            if key not in ("labels", "graph_sha256")}
    for template in cache_home.glob("graph-templates-v1/*/*.pb"):
        template.write_bytes(template.read_bytes()[:-10])
    again, _ = export("third", head)
    assert len(built) == 2 and again == graph  # traced, and the template is kept anew
    export("fourth", head_of(size, 2, 3))
    assert len(built) == 2
