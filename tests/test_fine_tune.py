"""Fine-tuning, early stopping, regularisation: weights in the export, best-step restore, failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from retrainer.cli.retrain import main
from retrainer.errors import EXIT_INTERRUPTED, EXIT_USAGE
from retrainer.training.head import train_head
from retrainer.training.head_types import FeatureSet, TrainingConfig
from retrainer.training.regularization import Regularization
from tests.fixtures_data import make_color_image_dir
from tests.fixtures_extractors import TinyExtractor
from tests.fixtures_hub import module_kernel, save_tf1_hub_module, save_tf2_module
from tests.fixtures_pipeline import copy_classes, retrain_args


def graph_constants(graph: Path) -> dict[str, np.ndarray]:
    graph_def = tf.compat.v1.GraphDef.FromString(graph.read_bytes())
    return {node.name: tf.make_ndarray(node.attr["value"].tensor)
            for node in graph_def.node if node.op == "Const"}


def classify_with_graph(graph: Path, pixels: np.ndarray) -> np.ndarray:
    """Run the frozen graph the way label_image.py does: Placeholder -> final_result."""
    graph_def = tf.compat.v1.GraphDef.FromString(graph.read_bytes())
    with tf.Graph().as_default() as imported:
        tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=imported) as session:
        return session.run("final_result:0", {"Placeholder:0": pixels})


def find_kernel(constants: dict[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    matches = [value for value in constants.values() if value.shape == shape]
    assert len(matches) == 1, f"expected one constant of shape {shape}"
    return matches[0]


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return make_color_image_dir(tmp_path / "images", per_class=12)


def run(tmp_path: Path, images: Path, *flags: str, extractor: str = "tiny_test"):
    result = CliRunner().invoke(main, retrain_args(tmp_path, images, *flags, "--json",
                                                   extractor=extractor))
    return result


def test_fine_tuning_changes_the_extractor_weights_in_the_export(tmp_path, images):
    original = TinyExtractor().kernel.numpy()
    result = run(tmp_path, images, "--do_fine_tuning", "--fine_tune_epochs", "2",
                 "--fine_tune_learning_rate", "0.5", "--flip_left_right")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    tuning = document["fine_tuning"]
    assert tuning["epochs_run"] == 2 and tuning["tuned_parameters"] == original.size
    assert [point["epoch"] for point in tuning["history"]] == [0, 1, 2]
    graph = Path(document["outputs"]["output_graph"])
    exported = find_kernel(graph_constants(graph), original.shape)
    assert np.abs(exported - original).max() > 1e-4
    named = json.loads(graph.with_name(graph.name + ".meta.json").read_text())["extractor"]
    assert named["fine_tuned_from"] == document["extractor_id"]
    assert named["id"].startswith(document["extractor_id"] + "-tuned-")
    probabilities = classify_with_graph(graph, np.full((2, 32, 32, 3), 0.5, np.float32))
    assert probabilities.shape == (2, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_fine_tuning_a_tf2_saved_model_module(tmp_path, images):
    kernel = module_kernel()
    module = save_tf2_module(tmp_path / "module", kernel)
    result = run(tmp_path, images, "--do_fine_tuning", "--fine_tune_learning_rate", "0.5",
                 "--fine_tune_epochs", "1", extractor=str(module))
    assert result.exit_code == 0, result.output
    graph = Path(json.loads(result.stdout)["outputs"]["output_graph"])
    exported = find_kernel(graph_constants(graph), (1, 1, 3, 8))
    assert np.abs(exported[0, 0] - kernel).max() > 1e-4


def test_untrainable_extractor_exits_2_before_any_work(tmp_path, images):
    module = save_tf1_hub_module(tmp_path / "tf1_module", module_kernel())
    result = run(tmp_path, images, "--do_fine_tuning", extractor=str(module))
    assert result.exit_code == EXIT_USAGE
    assert "cannot be trained" in result.output and "TF1 Hub" in result.output
    assert not list(tmp_path.rglob("*.npy"))


@pytest.mark.parametrize("flag, value", [
    ("--random_crop", "-1"), ("--random_scale", "-5"), ("--random_brightness", "101"),
    ("--distorted_variants", "0"), ("--fine_tune_blocks", "-1"), ("--fine_tune_epochs", "0"),
    ("--fine_tune_learning_rate", "0"), ("--early_stopping_patience", "0"),
    ("--momentum", "1"), ("--dropout_rate", "-0.1"), ("--l2_regularizer", "-1"),
    ("--label_smoothing", "1.5"),
])
def test_bad_values_exit_2_naming_the_flag(tmp_path, images, flag, value):
    result = run(tmp_path, images, flag, value)
    assert result.exit_code == EXIT_USAGE
    assert f"{flag} must be" in result.output and "Traceback" not in result.output


def test_ctrl_c_while_fine_tuning_keeps_the_cache_and_writes_no_export(
        tmp_path, images, monkeypatch):
    from retrainer.training import fine_tune

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
        yield  # a generator, like the real epoch

    monkeypatch.setattr(fine_tune._FineTuneEpochs, "_epoch", interrupted)
    result = run(tmp_path, images, "--do_fine_tuning")
    assert result.exit_code == EXIT_INTERRUPTED
    assert not (tmp_path / "out" / "graph.pb").exists()
    assert list((tmp_path / "bottlenecks").rglob("*.npy"))


def separable(count: int, seed: int) -> FeatureSet:
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    features = rng.normal(size=(count, 4)).astype(np.float32) + 3 * labels[:, None]
    return FeatureSet(features, labels.astype(np.int64))


def config(**overrides) -> TrainingConfig:
    settings = {"steps": 300, "learning_rate": 0.5, "train_batch_size": 20,
                "validation_batch_size": -1, "eval_step_interval": 10, "seed": 0}
    return TrainingConfig(**{**settings, **overrides})


def test_early_stopping_restores_the_best_step():
    train = separable(40, 0)
    # Validation labels flipped: the better the head fits, the worse validation gets.
    held_out = separable(20, 1)
    validation = FeatureSet(held_out.features, 1 - held_out.labels)
    stopped = train_head(train, validation, 2, config(early_stopping_patience=3))
    entropies = [point.validation_cross_entropy for point in stopped.history]
    best = int(np.argmin(entropies))
    assert stopped.best_step == stopped.history[best].step
    assert len(entropies) == best + 4 < 30  # stopped 3 evaluations without gain after the best
    replay = train_head(train, validation, 2, config(steps=stopped.best_step + 1))
    np.testing.assert_array_equal(stopped.head.weights, replay.head.weights)
    # When validation keeps improving, it runs to the end and keeps the best (lowest) point.
    full = train_head(train, separable(20, 1), 2, config(early_stopping_patience=3))
    entropies = {point.step: point.validation_cross_entropy for point in full.history}
    assert full.best_step == min(entropies, key=entropies.get)
    replay = train_head(train, separable(20, 1), 2, config(steps=full.best_step + 1))
    np.testing.assert_array_equal(full.head.weights, replay.head.weights)


def test_regularisation_options_change_training():
    train, validation = separable(40, 0), separable(20, 1)
    plain = train_head(train, validation, 2, config(steps=20)).head.weights
    for option in (Regularization(momentum=0.9), Regularization(dropout_rate=0.5),
                   Regularization(l2_regularizer=0.5), Regularization(label_smoothing=0.2)):
        weights = train_head(train, validation, 2,
                             config(steps=20, regularization=option)).head.weights
        assert not np.allclose(weights, plain), option
        if option.l2_regularizer:
            assert np.square(weights).sum() < np.square(plain).sum()


@pytest.mark.slow
def test_fine_tuning_lite0_end_to_end_on_fashion_mnist(tmp_path, fashion_mnist_dir):
    """Real model, real images: distortions + fine-tuning; the export holds the tuned weights."""
    from retrainer.extractors import create_extractor

    images = copy_classes(fashion_mnist_dir, tmp_path / "fashion", ("Trouser", "Bag"), 12)
    result = run(tmp_path, images, "--do_fine_tuning", "--fine_tune_blocks", "1",
                 "--fine_tune_epochs", "1", "--train_batch_size", "8", "--random_crop", "10",
                 "--distorted_variants", "1", extractor="efficientnet_lite0")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["distorted"]["computed"] > 0 and document["fine_tuning"]["epochs_run"] == 1
    head_kernel = create_extractor("efficientnet_lite0").head[0].numpy()
    graph = Path(document["outputs"]["output_graph"])
    exported = find_kernel(graph_constants(graph), head_kernel.shape)
    assert np.abs(exported - head_kernel).max() > 0
    pixels = np.random.default_rng(0).random((2, 224, 224, 3)).astype(np.float32)
    assert classify_with_graph(graph, pixels).shape == (2, 2)


@pytest.mark.slow
def test_fine_tuning_a_keras_backbone(tmp_path, images):
    result = run(tmp_path, images, "--do_fine_tuning", "--fine_tune_blocks", "1",
                 "--fine_tune_learning_rate", "0.05", "--image_size", "32", "--fine_tune_epochs", "1",
                 extractor="keras:MobileNetV2,weights=random")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["fine_tuning"]["tuned_parameters"] > 0
    # MobileNetV2 at 32 px pools a 1x1 map: the report explains the last map with extent
    report = Path(document["outputs"]["report_html"]).read_text("utf-8")
    assert report.count('<figure class="pair">') > 0, "no heat maps in the report"
