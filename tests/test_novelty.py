"""The novelty score: in every export as the output `novelty`, equal to the training-time score,
with its threshold in the metadata; and `label-image --reject`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from retrainer.classify.config import ClassifyConfig
from retrainer.classify.run import Classifier
from retrainer.cli.label_image import main as label_image_main

# Largest |export - training-time| novelty on the test images, per artifact (the score is a
# cosine distance in [0, 1]; int8 runs the whole network in 8 bits, its output pinned to [0, 1]).
TOLERANCE = {"frozen graph": 1e-5, "saved_model": 1e-5, "tflite none": 1e-4,
             "tflite dynamic": 0.05, "tflite float16": 0.01, "tflite int8": 0.1,
             "onnx none": 1e-4, "onnx int8": 0.1}


@pytest.fixture(scope="module")
def training_time(deployed_run):
    """The run's novelty refitted from its cached vectors, and the test split's vectors."""
    from retrainer.cache.bottlenecks import compute_bottlenecks
    from retrainer.data.discovery import discover_images
    from retrainer.data.split import TESTING
    from retrainer.extractors import create_extractor
    from retrainer.pipeline.split_features import SplitFeatures
    from retrainer.training.novelty import fit_run_novelty

    collection = discover_images(deployed_run.image_dir)
    extractor = create_extractor("tiny_test")
    bottlenecks = compute_bottlenecks([image.path for image in collection.images], extractor,
                                      deployed_run.out.parent / "bottlenecks",
                                      show_progress=False)
    assert bottlenecks.computed == 0  # the run's own vectors
    splits = SplitFeatures(collection, bottlenecks)
    novelty = fit_run_novelty(splits, extractor, None, 0.95, 0)
    return novelty, splits.images[TESTING], splits.features[TESTING].features


def _artifacts(deployed_run):
    return {"frozen graph": deployed_run.graph, "saved_model": deployed_run.saved_model,
            **{f"tflite {mode}": path for mode, path in deployed_run.tflite.items()},
            **{f"onnx {mode}": path for mode, path in deployed_run.onnx.items()}}


def test_every_export_has_the_training_time_novelty_and_threshold(deployed_run, training_time):
    novelty, test_images, test_vectors = training_time
    assert deployed_run.result.novelty["threshold"] == pytest.approx(novelty.threshold)
    assert deployed_run.result.novelty["test_count"] == len(test_images) > 0
    expected = novelty.scores(test_vectors)
    for name, path in _artifacts(deployed_run).items():
        with Classifier(ClassifyConfig(graph=path)) as classifier:
            assert classifier.spec.novelty_threshold == pytest.approx(novelty.threshold), name
            pixels = np.stack([np.asarray(Image.open(image.path).convert("RGB").resize((32, 32)))
                               for image in test_images])
            _, scores = classifier.outputs(pixels)
        assert scores is not None and scores.shape == expected.shape, name
        np.testing.assert_allclose(scores, expected, atol=TOLERANCE[name], err_msg=name)


def test_frozen_graph_keeps_final_result_and_adds_a_novelty_op(deployed_run):
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(deployed_run.graph.read_bytes())
    nodes = {node.name: node for node in graph_def.node}
    assert nodes["final_result"].op == "Identity" and nodes["novelty"].op == "Identity"
    meta = json.loads((deployed_run.graph.parent / "output_graph.pb.meta.json").read_text())
    assert meta["output_layer"] == "final_result"
    assert meta["novelty"]["output_layer"] == "novelty"
    assert meta["novelty"]["threshold"] == deployed_run.result.novelty["threshold"]


def test_saved_model_signatures_return_novelty(deployed_run):
    import tensorflow as tf

    model = tf.saved_model.load(str(deployed_run.saved_model))
    image = next(deployed_run.image_dir.rglob("*.png")).read_bytes()
    answer = model.signatures["serving_bytes"](image_bytes=tf.constant([image, image]))
    assert answer["novelty"].shape == (2,) and answer["unknown"].dtype == tf.bool
    assert set(answer) == {"probabilities", "label", "score", "novelty", "unknown"}
    floats = model.signatures["serving_default"](images=tf.zeros([1, 32, 32, 3]))
    assert set(floats) == {"probabilities", "novelty"}


def test_onnx_has_a_novelty_output_and_its_threshold_in_metadata_props(deployed_run):
    import onnx

    for path in deployed_run.onnx.values():
        model = onnx.load(str(path))
        assert [output.name for output in model.graph.output] == ["probabilities", "novelty"]
        props = {prop.key: prop.value for prop in model.metadata_props}
        novelty = json.loads(props["novelty"])
        assert novelty["output_layer"] == "novelty"
        assert novelty["threshold"] == deployed_run.result.novelty["threshold"]
        assert "multi_label" not in props  # a single-label model


@pytest.mark.parametrize("model", ["graph", "onnx"])
def test_label_image_reject(deployed_run, tmp_path, model):
    path = deployed_run.graph if model == "graph" else deployed_run.onnx["none"]
    known = sorted(deployed_run.image_dir.rglob("*.png"))[0]
    # A photo-like image unlike the flat colours the model was trained on.
    rng = np.random.default_rng(0)
    noise = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(noise)
    runner = CliRunner()
    arguments = ["--graph", str(path), str(known), str(noise)]
    plain = runner.invoke(label_image_main, [*arguments, "--json"], catch_exceptions=False)
    assert plain.exit_code == 0
    assert all("unknown" not in json.loads(line) for line in plain.output.splitlines())
    rejected = runner.invoke(label_image_main, [*arguments, "--json", "--reject"],
                             catch_exceptions=False)
    first, second = (json.loads(line) for line in rejected.output.splitlines())
    assert first["unknown"] is False and second["unknown"] is True
    assert first["novelty"] < deployed_run.result.novelty["threshold"] < second["novelty"]
    text = runner.invoke(label_image_main, [*arguments, "--reject"], catch_exceptions=False)
    lines = text.output.splitlines()
    assert lines[lines.index(f"==> {noise} <==") + 1].startswith("unknown (")
    without = runner.invoke(label_image_main, arguments, catch_exceptions=False)
    assert "unknown" not in without.output


def test_a_run_keeps_its_fit_and_reads_it_back(tmp_path, caplog):
    """The same splits (image digests, labels) and settings: the fit is read back, equal; other
    settings or a damaged entry: fitted again."""
    from types import SimpleNamespace

    from retrainer.data.split import TESTING, TRAINING, VALIDATION
    from retrainer.training.head import FeatureSet
    from retrainer.training.novelty import fit_run_novelty

    rng = np.random.default_rng(0)
    features = {split: FeatureSet(rng.random((n, 8), np.float32), np.arange(n) % 2)
                for split, n in ((TRAINING, 40), (VALIDATION, 10), (TESTING, 0))}
    splits = SimpleNamespace(features=features, images={}, digests={
        split: [f"{split}{row:02d}" for row in range(len(rows))] for split, rows in features.items()})
    kept = (tmp_path, "engine-id")
    first = fit_run_novelty(splits, None, None, 0.95, 0, kept)
    (entry,) = (tmp_path / "novelty-v1").rglob("*.npz")
    again = fit_run_novelty(splits, None, None, 0.95, 0, kept)
    assert again.to_json() == first.to_json()
    np.testing.assert_array_equal(again.references, first.references)
    entry.write_bytes(b"PK damaged")
    assert fit_run_novelty(splits, None, None, 0.95, 0, kept).to_json() == first.to_json()
    fit_run_novelty(splits, None, None, 0.9, 0, kept)  # another pass rate: its own entry
    assert len(list((tmp_path / "novelty-v1").rglob("*.npz"))) == 2
