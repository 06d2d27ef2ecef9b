"""ONNX export (`--onnx_output_file`) and `label-image` on `.onnx`, through real tf2onnx and ONNX
Runtime: conversion, metadata read back, the export report rows, content sniffing, error cases."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from retrainer.cli.label_image import main as label_image_main
from retrainer.cli.retrain import main as retrain_main
from retrainer.exports.onnx import OPSET
from retrainer.extractors import list_extractors, register_extractor
from retrainer.formats.graph_contract import looks_like_onnx
from tests.fixtures_data import make_color_image_dir
from tests.fixtures_extractors import TinyExtractor
from tests.fixtures_label_image import write_solid_images
from tests.fixtures_pipeline import retrain_args

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

UNCONVERTIBLE = "unconvertible_test"


class UnconvertibleExtractor(TinyExtractor):
    """TinyExtractor plus an op tf2onnx has no ONNX translation for: ScaleAndTranslate (an
    antialiased resize; an op the model-file check allows, so only the conversion fails)."""

    def __init__(self) -> None:
        super().__init__()
        self.spec = type(self.spec)(name=UNCONVERTIBLE, id="unconvertible_test-v1",
                                    input_size=(32, 32), vector_size=17)

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        small = tf.image.resize(images, [16, 16], antialias=True)
        odd = tf.reduce_mean(small, [1, 2, 3])[:, tf.newaxis]
        return tf.concat([super().__call__(images), odd], axis=-1)


if UNCONVERTIBLE not in list_extractors():
    register_extractor(UNCONVERTIBLE)(lambda image_size=None: UnconvertibleExtractor())


@pytest.fixture(scope="module")
def onnx_run(tmp_path_factory):
    """One real retrain (tiny_test, red/green/blue) writing the float and int8 .onnx files."""
    root = tmp_path_factory.mktemp("onnx_run")
    images = make_color_image_dir(root / "colors", per_class=20)
    args = retrain_args(root, images, "--onnx_output_file", str(root / "out" / "model.onnx"),
                        "--onnx_quantization", "none", "--onnx_quantization", "int8",
                        "--tflite_calibration_images", "20", "--json", steps=100)
    result = CliRunner().invoke(retrain_main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root / "out", json.loads(result.stdout)


@pytest.fixture(scope="module")
def solid(tmp_path_factory):
    return write_solid_images(tmp_path_factory.mktemp("solid"))


def label_image(*args: str):
    return CliRunner().invoke(label_image_main, list(args))


def test_conversion_writes_a_checked_model_with_its_contract(onnx_run):
    out, document = onnx_run
    assert document["outputs"]["onnx_output_file"] == [str(out / "model_none.onnx"),
                                                      str(out / "model_int8.onnx")]
    model = onnx.load(out / "model_none.onnx")
    onnx.checker.check_model(model)
    assert {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}["ai.onnx"] \
        == OPSET
    (image_input,) = model.graph.input
    dims = [dim.dim_param or dim.dim_value for dim in image_input.type.tensor_type.shape.dim]
    assert (image_input.name, dims) == ("images", ["N", 32, 32, 3])
    # every run fits a novelty score: its output comes second, looked up by name
    assert [output.name for output in model.graph.output] == ["probabilities", "novelty"]
    for mode in ("none", "int8"):  # only the operator sets its nodes use
        imports = [entry.domain for entry in onnx.load(out / f"model_{mode}.onnx").opset_import]
        assert imports == [""], (mode, imports)


@pytest.mark.parametrize("mode", ["none", "int8"])
def test_metadata_reads_back_through_onnx_runtime(onnx_run, mode):
    out, document = onnx_run
    session = onnxruntime.InferenceSession(str(out / f"model_{mode}.onnx"),
                                           providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    assert json.loads(metadata["labels"]) == document["labels"]
    assert (float(metadata["input_mean"]), float(metadata["input_std"])) == (0.0, 255.0)
    assert (metadata["input_height"], metadata["input_width"]) == ("32", "32")
    assert metadata["format"] == "retrainer-onnx/1"
    assert json.loads(metadata["extractor"])["name"] == "tiny_test"
    assert json.loads(metadata["novelty"])["threshold"] == document["novelty"]["threshold"]
    red = np.zeros((2, 32, 32, 3), np.float32)
    red[..., 0] = 0.9
    (probabilities,) = session.run(["probabilities"], {"images": red})
    assert probabilities.shape == (2, 3)
    assert np.allclose(probabilities.sum(1), 1, atol=0.02)
    assert [document["labels"][index] for index in probabilities.argmax(1)] == ["red", "red"]


def test_export_report_has_the_onnx_rows(onnx_run):
    _, document = onnx_run
    rows = {row["artifact"]: row for row in document["exports"]}
    assert list(rows) == ["frozen graph", "onnx", "onnx int8"]
    assert rows["onnx"]["agreement"] == 1.0
    assert rows["onnx"]["max_probability_difference"] < 1e-4
    assert rows["onnx int8"]["agreement"] >= 0.9
    assert rows["onnx int8"]["size_bytes"] > 0


@pytest.mark.parametrize("mode", ["none", "int8"])
def test_label_image_on_onnx_prints_what_the_graph_prints(onnx_run, solid, mode):
    out, _ = onnx_run
    paths = [str(solid[label]) for label in ("red", "green", "blue")]
    graph = label_image("--graph", str(out / "graph.pb"), "--json", "--top_k", "3", *paths)
    model = label_image("--graph", str(out / f"model_{mode}.onnx"), "--json", "--top_k", "3",
                        *paths)
    assert model.exit_code == 0, model.output
    from_graph = [json.loads(line) for line in graph.stdout.splitlines()]
    from_onnx = [json.loads(line) for line in model.stdout.splitlines()]
    assert [row["label"] for row in from_onnx] == ["red", "green", "blue"]
    assert [[p["label"] for p in row["predictions"]] for row in from_onnx] == \
        [[p["label"] for p in row["predictions"]] for row in from_graph]


def test_onnx_is_told_by_content_and_carries_its_labels(onnx_run, solid, tmp_path):
    out, _ = onnx_run
    alone = tmp_path / "renamed.pb"  # no labels file beside it, misleading name
    shutil.copy(out / "model_none.onnx", alone)
    result = label_image("--graph", str(alone), "--quiet", str(solid["green"]))
    assert result.exit_code == 0, result.output
    assert result.stdout.split("\t")[0] == "green"
    labels = tmp_path / "mine.txt"
    labels.write_text("R\nG\nB\n")
    result = label_image("--graph", str(alone), "--labels", str(labels), "--quiet",
                         str(solid["green"]))
    assert result.stdout.split("\t")[0] == "G"  # --labels wins over the metadata


def test_content_sniffing_tells_the_kinds_apart(onnx_run):
    out, _ = onnx_run
    assert looks_like_onnx((out / "model_none.onnx").read_bytes())
    assert looks_like_onnx((out / "model_int8.onnx").read_bytes())
    assert not looks_like_onnx((out / "graph.pb").read_bytes())
    assert not looks_like_onnx(b"") and not looks_like_onnx(b"\x1c\x00\x00\x00TFL3")


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_corrupt_onnx_exits_4_with_one_line(onnx_run, solid, tmp_path, damage):
    out, _ = onnx_run
    data = bytearray((out / "model_none.onnx").read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 3]
    else:
        data[40:4000] = bytes(range(256)) * 15 + bytes(range(160))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(bytes(data))
    result = label_image("--graph", str(broken), str(solid["red"]))
    assert result.exit_code == 4, result.output
    assert result.stderr.startswith("Error: ") and str(broken) in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_conversion_failure_names_the_extractor_and_keeps_the_other_exports(tmp_path):
    images = make_color_image_dir(tmp_path / "colors", per_class=8)
    out = tmp_path / "out"
    args = retrain_args(tmp_path, images, "--onnx_output_file", str(out / "m.onnx"),
                        "--saved_model_dir", str(out / "saved_model"), "--json",
                        extractor=UNCONVERTIBLE)
    result = CliRunner().invoke(retrain_main, args)
    assert result.exit_code == 4, result.output
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and "Traceback" not in result.stderr
    assert f"extractor {UNCONVERTIBLE}" in error_lines[0] and "ScaleAndTranslate" in error_lines[0]
    assert not (out / "m.onnx").exists()
    for kept in ("graph.pb", "labels.txt", "saved_model/saved_model.pb", "report.html",
                 "metrics.json"):
        assert (out / kept).is_file(), kept
    document = json.loads(result.stdout)
    assert document["error"]["exit_code"] == 4
    assert [row["artifact"] for row in document["exports"]] == ["frozen graph", "saved_model"]


def test_missing_extra_is_one_line_naming_it(tmp_path, monkeypatch, onnx_run, solid):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as if not installed
    args = retrain_args(tmp_path, make_color_image_dir(tmp_path / "c", per_class=4),
                        "--onnx_output_file", str(tmp_path / "m.onnx"))
    result = CliRunner().invoke(retrain_main, args)
    assert result.exit_code == 4
    assert result.stderr == ("Error: --onnx_output_file needs the onnx extra (tf2onnx not "
                             "installed): pip install 'retrainer[onnx]'\n")
    assert not (tmp_path / "bottlenecks").exists()  # refused before any work
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    out, _ = onnx_run
    result = label_image("--graph", str(out / "model_none.onnx"), str(solid["red"]))
    assert result.exit_code == 4 and result.stderr.count("\n") == 1
    assert "needs the onnx extra (onnxruntime not installed)" in result.stderr


def test_explain_on_onnx_exits_2(onnx_run, solid, tmp_path):
    out, _ = onnx_run
    result = label_image("--graph", str(out / "model_none.onnx"), "--explain",
                         str(tmp_path / "maps"), str(solid["red"]))
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("Error: --explain needs a frozen graph (.pb) or a SavedModel, "
                                    f"but {out / 'model_none.onnx'} is an ONNX model")


def test_max_export_accuracy_drop_applies_to_onnx(onnx_run, tmp_path):
    """An .onnx whose head lost its training (here: a freshly initialised one) scores below the
    frozen graph on the test split, and --max_export_accuracy_drop names it (exit 7)."""
    from retrainer.data.batches import decode_files
    from retrainer.exports.classifier import Classifier
    from retrainer.exports.onnx import write_onnx_files
    from retrainer.exports.run import Exported
    from retrainer.exports.verify import FROZEN_GRAPH, export_report
    from retrainer.extractors import create_extractor
    from retrainer.training.head_layer import initial_head

    out, document = onnx_run
    labels = tuple(document["labels"])
    untrained = Classifier(create_extractor("tiny_test"), initial_head(16, len(labels), seed=3),
                           labels, "final_result")
    path = tmp_path / "untrained.onnx"
    write_onnx_files(untrained, {"none": path}, 10, [], seed=0)
    image_dir = Path(document["flags"]["image_dir"])
    tests = [p for name in labels for p in sorted((image_dir / name).iterdir())]
    pixels, ok = decode_files(tests, (32, 32))
    truth = np.array([labels.index(p.parent.name) for p in tests])
    reports = export_report([(FROZEN_GRAPH, out / "graph.pb"), ("onnx", path)], pixels[ok],
                            truth[ok])
    assert [row.artifact for row in reports] == ["frozen graph", "onnx"]
    assert reports[1].change_points < -5
    failure = Exported({}, tuple(reports)).accuracy_drop_failure(5)
    assert failure is not None and f"onnx ({path})" in failure
