"""The allowlist refuses none of the models retrainer writes or reads (docs/security.md).

Exports come from retrainer's own exporters (frozen graph, SavedModel, .tflite, .onnx; with the
novelty output and a multi-label sigmoid head too) and from real `retrain` runs (fine-tuned too);
modules are the TF2 / TF1 Hub styles the tests build. Every export a test writes is also checked
on the way by `label-image` and the export verification; these tests name the models the
allowlist was measured on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from retrainer.security import check_model, model_ops
from retrainer.security.allowlist import ALLOWED_OPS
from tests.fixtures_data import make_color_image_dir
from tests.fixtures_hub import module_kernel, save_tf2_module
from tests.fixtures_pipeline import retrain_args
from tests.fixtures_security import save_tf1_slim_style_module

# One backbone per keras.applications family, at a small input (the ops do not depend on size).
KERAS_FAMILIES = {
    "MobileNet": 32, "MobileNetV2": 32, "MobileNetV3Small": 32, "MobileNetV3Large": 32,
    "EfficientNetB0": 32, "EfficientNetV2B0": 32, "ConvNeXtTiny": 32, "ResNet50": 32,
    "ResNet50V2": 32, "InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71,
    "DenseNet121": 32, "NASNetMobile": 32, "VGG16": 32,
}


def lite_classifier(handle: str, image_size=None, multi_label_novelty: bool = False):
    """`handle` with a fresh 3-class head; with `multi_label_novelty`, a sigmoid head with
    thresholds and a novelty score over 64 reference vectors, as a multi-label run exports."""
    import numpy as np

    from retrainer.exports.classifier import Classifier
    from retrainer.extractors import create_extractor
    from retrainer.training.head_layer import initial_head
    from retrainer.training.novelty import fit_novelty
    from retrainer.training.objectives import SIGMOID, SOFTMAX

    extractor = create_extractor(handle, image_size)
    size = extractor.spec.vector_size
    head = initial_head(size, 3, seed=0, objective=SIGMOID if multi_label_novelty else SOFTMAX)
    if not multi_label_novelty:
        return Classifier(extractor, head, ("a", "b", "c"), "final_result")
    vectors = np.random.default_rng(0).random((96, size), np.float32)
    novelty = fit_novelty(vectors[:64], np.arange(64) % 3, vectors[64:])
    return Classifier(extractor, head, ("a", "b", "c"), "final_result", novelty, [0.5, 0.4, 0.6])


def export_both(handle: str, folder: Path, image_size=None, classifier=None) -> tuple[Path, Path]:
    """Frozen graph + SavedModel of `handle` with a fresh 3-class head, by retrainer's exporters."""
    from retrainer.exports.graph import GraphExporter
    from retrainer.exports.saved_model import write_saved_model

    classifier = classifier or lite_classifier(handle, image_size)
    graph, saved_model = folder / "output_graph.pb", folder / "saved_model"
    folder.mkdir(parents=True, exist_ok=True)
    GraphExporter(classifier).write_graph(graph)
    write_saved_model(classifier, saved_model)
    return graph, saved_model


def assert_allowed(*paths: Path) -> None:
    for path in paths:
        assert model_ops(path) <= ALLOWED_OPS, sorted(model_ops(path) - ALLOWED_OPS)
        check_model(path)


def test_lite0_exports_pass(tmp_path):
    assert_allowed(*export_both("efficientnet_lite0", tmp_path))


def test_every_export_with_the_novelty_output_passes(deployed_run):
    """A run's exports all carry the novelty output (k-NN: L2 normalisation, MatMul, TopKV2)."""
    assert_allowed(deployed_run.graph, deployed_run.saved_model)
    assert {"TopKV2", "Rsqrt", "MatMul"} <= model_ops(deployed_run.graph)
    for path in [*deployed_run.tflite.values(), *deployed_run.onnx.values()]:
        check_model(path)  # built-in TFLite ops / standard ONNX ops only


@pytest.mark.slow
def test_lite0_multi_label_novelty_exports_pass_in_every_format(tmp_path):
    """efficientnet_lite0 with a sigmoid head, thresholds and the novelty output: frozen graph,
    SavedModel, .tflite float32 and int8, .onnx float32 and int8."""
    import numpy as np

    from retrainer.exports.onnx import convert as onnx_model
    from retrainer.exports.onnx import quantize_int8
    from retrainer.exports.quantization import QuantizationConfig
    from retrainer.exports.tflite import convert

    classifier = lite_classifier("efficientnet_lite0", multi_label_novelty=True)
    graph, saved_model = export_both("efficientnet_lite0", tmp_path, classifier=classifier)
    assert_allowed(graph, saved_model)
    assert {"Sigmoid", "TopKV2"} <= model_ops(graph)
    height, width = classifier.extractor.spec.input_size
    calibration = np.random.default_rng(0).integers(0, 256, (10, height, width, 3), np.uint8)
    for mode in (QuantizationConfig("none"), QuantizationConfig("int8", 10)):
        path = tmp_path / f"model_{mode.mode}.tflite"
        path.write_bytes(convert(classifier, mode, calibration))
        check_model(path)
    data = onnx_model(classifier).SerializeToString()
    for name, model in (("none", data), ("int8", quantize_int8(data, calibration))):
        path = tmp_path / f"model_{name}.onnx"
        path.write_bytes(model)
        check_model(path)


def test_slow_test_module_passes(tmp_path):
    from tests.fixtures_faults import save_slow_module

    assert_allowed(save_slow_module(tmp_path / "module", iterations=2, width=8))


def test_tf1_slim_style_module_passes_and_trains(tmp_path):
    from retrainer.cli.retrain import main as retrain

    module = save_tf1_slim_style_module(tmp_path / "module")
    assert {"VariableV2", "Switch", "Merge", "FusedBatchNorm"} <= model_ops(module)
    images = make_color_image_dir(tmp_path / "colors")
    result = CliRunner().invoke(retrain, retrain_args(tmp_path, images, "--quiet",
                                                      extractor=str(module), steps=10))
    assert result.exit_code == 0, result.output


def test_fine_tuned_exports_pass(tmp_path):
    from retrainer.cli.retrain import main as retrain

    images = make_color_image_dir(tmp_path / "colors", per_class=8)
    module = save_tf2_module(tmp_path / "module", module_kernel())
    out = tmp_path / "out"
    result = CliRunner().invoke(retrain, retrain_args(
        tmp_path, images, "--do_fine_tuning", "--fine_tune_epochs", "1", "--json",
        "--saved_model_dir", str(out / "saved_model"), extractor=str(module), steps=10))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["fine_tuning"]["epochs_run"] == 1
    assert_allowed(out / "graph.pb", out / "saved_model")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_larger_built_in_exports_pass(name, tmp_path):
    assert_allowed(*export_both(name, tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(KERAS_FAMILIES))
def test_keras_family_exports_pass(name, tmp_path):
    assert_allowed(*export_both(f"keras:{name},weights=random", tmp_path, KERAS_FAMILIES[name]))


@pytest.mark.slow
def test_fine_tuned_lite0_exports_pass(tmp_path, fashion_mnist_dir):
    from retrainer.cli.retrain import main as retrain
    from tests.fixtures_pipeline import copy_classes

    images = copy_classes(fashion_mnist_dir, tmp_path / "fashion", ("Trouser", "Bag"), 10)
    out = tmp_path / "out"
    result = CliRunner().invoke(retrain, retrain_args(
        tmp_path, images, "--do_fine_tuning", "--fine_tune_blocks", "1", "--fine_tune_epochs", "1",
        "--train_batch_size", "8", "--saved_model_dir", str(out / "saved_model"),
        "--tflite_output_file", str(out / "model.tflite"), "--tflite_quantization", "none",
        "--tflite_quantization", "int8", "--tflite_calibration_images", "10",
        extractor="efficientnet_lite0", steps=10))
    assert result.exit_code == 0, result.output
    assert_allowed(out / "graph.pb", out / "saved_model")
    for tflite in out.glob("*.tflite"):
        check_model(tflite)


@pytest.mark.slow
def test_keras2_made_tf2_module_passes(tmp_path):
    """A TF2 module made the way TF Hub's TF2 image modules were: tf_keras backbone + dropout."""
    import tensorflow as tf
    import tf_keras

    backbone = tf_keras.applications.MobileNetV2(weights=None, include_top=False, pooling="avg",
                                                 input_shape=(96, 96, 3))
    model = tf_keras.Model(backbone.input, tf_keras.layers.Dropout(0.2)(backbone.output))
    tf.saved_model.save(model, str(tmp_path / "module"))
    assert "RandomUniform" in model_ops(tmp_path / "module")  # the training-mode trace
    assert_allowed(tmp_path / "module")
