"""TFLite export: the four quantization modes, int8 quantization parameters, the metadata, the
export report and its errors. Real conversions of the tiny extractor's classifier (fast)."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image

from retrainer.classify.tflite import make_interpreter
from retrainer.cli.retrain import main as retrain_main
from retrainer.errors import DataError
from retrainer.exports.classifier import Classifier
from retrainer.exports.quantization import QuantizationConfig
from retrainer.exports.run import Exported
from retrainer.exports.tflite import convert, write_tflite_files
from retrainer.exports.verify import ArtifactReport
from retrainer.formats.tflite_metadata import (
    METADATA_IDENTIFIER,
    metadata_buffer,
    read_metadata,
)
from retrainer.training.head_layer import HeadLayer, initial_head
from tests.fixtures_data import make_color_image_dir
from tests.fixtures_extractors import TinyExtractor
from tests.fixtures_pipeline import retrain_args


class WideTinyExtractor(TinyExtractor):
    """The tiny extractor with 125 texture channels: its 3,375-weight kernel is large enough for
    the converter to quantize (it leaves tensors under 1,024 elements in float)."""

    def __init__(self) -> None:
        super().__init__()
        kernel = np.random.default_rng(1).normal(size=(3, 3, 3, 125)).astype(np.float32) / 3
        self.kernel = tf.Variable(kernel, trainable=False, name="kernel")
        self.spec = type(self.spec)(name="wide_tiny", id="wide_tiny-v1", input_size=(32, 32),
                                    vector_size=128)


def tensor_types(model: bytes) -> set[str]:
    interpreter = make_interpreter(model)
    return {np.dtype(detail["dtype"]).name for detail in interpreter.get_tensor_details()}


def run_tflite(model: bytes, image: np.ndarray) -> np.ndarray:
    interpreter = make_interpreter(model)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[np.newaxis])
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0]


@pytest.fixture(scope="module")
def wide_classifier() -> Classifier:
    head = initial_head(128, 3, seed=0)
    return Classifier(WideTinyExtractor(), head, ("a", "b", "c"), "final_result")


def test_each_mode_quantizes_what_it_names(wide_classifier):
    calibration = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    models = {mode.mode: convert(wide_classifier, mode, calibration) for mode in (
        QuantizationConfig("none"), QuantizationConfig("dynamic"),
        QuantizationConfig("float16"), QuantizationConfig("int8", 12))}
    assert "int8" not in tensor_types(models["none"]) and "float16" not in tensor_types(models["none"])
    assert "int8" in tensor_types(models["dynamic"])  # weights only
    assert "float16" in tensor_types(models["float16"])
    assert {"uint8", "int8"} <= tensor_types(models["int8"])
    assert len(models["dynamic"]) < 0.6 * len(models["none"])  # + fixed overhead
    assert len(models["float16"]) < 0.8 * len(models["none"])
    image = calibration[0]
    reference = run_tflite(models["none"], image.astype(np.float32) / 255)
    for mode in ("dynamic", "float16"):
        np.testing.assert_allclose(run_tflite(models[mode], image.astype(np.float32) / 255),
                                   reference, atol=0.05)
    int8 = run_tflite(models["int8"], image).astype(np.float32) / 256  # raw pixels in
    np.testing.assert_allclose(int8, reference, atol=0.1)


def test_int8_takes_raw_uint8_pixels_and_gives_uint8_probabilities(deployed_run):
    interpreter = make_interpreter(deployed_run.tflite["int8"].read_bytes())
    (source,), (sink, novelty) = interpreter.get_input_details(), interpreter.get_output_details()
    runner = interpreter.get_signature_runner("serving_default")
    assert runner.get_output_details()["probabilities"]["index"] == sink["index"]  # output 0
    assert runner.get_output_details()["novelty"]["index"] == novelty["index"]
    assert novelty["dtype"] == np.uint8 and novelty["quantization"][1] == 0  # pinned at 0
    assert source["dtype"] == np.uint8 and list(source["shape"]) == [1, 32, 32, 3]
    scale, zero_point = source["quantization"]
    assert zero_point == 0 and scale == pytest.approx(1 / 255)
    assert sink["dtype"] == np.uint8 and sink["quantization"] == (pytest.approx(1 / 256), 0)
    for mode in ("none", "dynamic", "float16"):
        source = make_interpreter(deployed_run.tflite[mode].read_bytes()).get_input_details()[0]
        assert source["dtype"] == np.float32 and source["quantization"] == (0.0, 0)


def test_metadata_reads_back_and_the_file_still_runs(deployed_run):
    data = deployed_run.tflite["int8"].read_bytes()
    assert data[4:8] == b"TFL3"
    assert metadata_buffer(data)[4:8] == METADATA_IDENTIFIER
    description = read_metadata(data)
    assert description.labels == deployed_run.result.labels
    assert (description.mean, description.std, description.input_size) == (0.0, 255.0, (32, 32))
    assert description.extra["novelty"]["threshold"] == deployed_run.result.novelty["threshold"]
    with zipfile.ZipFile(io.BytesIO(data)) as archive:  # appended zip, stored uncompressed
        assert [info.filename for info in archive.infolist()] == ["labels.txt", "retrainer.json"]
        assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
        assert archive.read("labels.txt").decode().splitlines() == list(deployed_run.result.labels)
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 0] = 230
    scores = run_tflite(data, red)
    assert deployed_run.result.labels[int(scores.argmax())] == "red"


def test_export_report_covers_every_artifact(deployed_run):
    rows = {row["artifact"]: row for row in deployed_run.result.exports}
    assert list(rows) == ["frozen graph", "tflite none", "tflite dynamic", "tflite float16",
                          "tflite int8", "saved_model", "onnx", "onnx int8"]
    frozen = rows["frozen graph"]
    assert frozen["accuracy"] == deployed_run.result.test_accuracy
    for name, row in rows.items():
        assert row["size_bytes"] > 0
        assert row["agreement"] >= 0.9, name
        assert row["change_points"] == pytest.approx((row["accuracy"] - frozen["accuracy"]) * 100)
    assert rows["tflite none"]["max_probability_difference"] < 1e-4


def test_summary_and_json_show_the_report(tmp_path, color_image_dir):
    args = retrain_args(tmp_path, make_color_image_dir(tmp_path / "c", per_class=12),
                        "--tflite_output_file", str(tmp_path / "out" / "m.tflite"))
    text = CliRunner().invoke(retrain_main, args, catch_exceptions=False)
    assert text.exit_code == 0, text.output
    assert "Exports on the test split (vs the frozen graph):" in text.output
    assert "tflite none" in text.output and (tmp_path / "out" / "m.tflite").is_file()


def test_int8_with_too_few_training_images_says_how_many(tmp_path):
    images = make_color_image_dir(tmp_path / "few", per_class=3)
    args = retrain_args(tmp_path, images, "--tflite_output_file", str(tmp_path / "m.tflite"),
                        "--tflite_quantization", "int8")
    result = CliRunner().invoke(retrain_main, args)
    assert result.exit_code == 3
    assert "needs at least 10" in result.stderr and "dynamic or float16" in result.stderr
    assert not list((tmp_path / "bottlenecks").rglob("*.npy"))  # refused before the long work


@pytest.mark.parametrize("target", ["file_parent", "folder"])
def test_unwritable_tflite_path_fails_before_long_work(tmp_path, color_image_dir, target):
    (tmp_path / "blocker").write_text("a file")
    (tmp_path / "folder.tflite").mkdir()
    path = tmp_path / ("blocker/m.tflite" if target == "file_parent" else "folder.tflite")
    args = retrain_args(tmp_path, color_image_dir, "--tflite_output_file", str(path))
    result = CliRunner().invoke(retrain_main, args)
    assert result.exit_code == 2 and "--tflite_output_file" in result.stderr
    assert not list((tmp_path / "bottlenecks").rglob("*.npy"))


def test_max_drop_needs_an_export_to_compare(tmp_path, color_image_dir):
    args = retrain_args(tmp_path, color_image_dir, "--max_export_accuracy_drop", "1")
    result = CliRunner().invoke(retrain_main, args)
    assert result.exit_code == 2
    assert "--tflite_output_file, --onnx_output_file or --saved_model_dir" in result.stderr


def test_int8_calibrated_on_one_class_loses_accuracy_and_fails_the_gate(deployed_run, tmp_path):
    """Calibrating on dark images unlike the test images squashes every activation range: a
    real export mismatch, caught by --max_export_accuracy_drop."""
    import tensorflow as tf

    from retrainer.data.batches import decode_files
    from retrainer.exports.run import Exported
    from retrainer.exports.verify import FROZEN_GRAPH, export_report
    from retrainer.extractors import create_extractor

    labels = deployed_run.result.labels
    layer = HeadLayer(initial_head(16, len(labels), seed=0))
    tf.train.Checkpoint(head=layer).read(str(deployed_run.out / "checkpoint" / "head")).expect_partial()
    classifier = Classifier(create_extractor("tiny_test"), layer.head(), labels, "final_result")
    dark = []
    for index in range(12):
        dark.append(tmp_path / f"dark_{index}.png")
        Image.new("RGB", (32, 32), (index, index, index)).save(dark[-1])
    path = tmp_path / "skewed.tflite"
    write_tflite_files(classifier, {"int8": path}, 12, dark, seed=0)
    tests = [p for name in labels for p in sorted((deployed_run.image_dir / name).iterdir())]
    pixels, ok = decode_files(tests, (32, 32))
    truth = np.array([labels.index(p.parent.name) for p in tests])
    report = export_report([(FROZEN_GRAPH, deployed_run.graph), ("tflite int8", path)],
                           pixels[ok], truth[ok])
    failure = Exported({}, tuple(report)).accuracy_drop_failure(5)
    assert failure is not None and "tflite int8" in failure


def test_accuracy_drop_check_names_only_exports_over_the_limit():
    def row(name, accuracy):
        return ArtifactReport(name, name, 1, accuracy, (accuracy - 0.9) * 100, 1.0, 0.0)

    exported = Exported({}, (row("frozen graph", 0.9), row("tflite float16", 0.89),
                             row("tflite int8", 0.87)))
    assert exported.accuracy_drop_failure(4.0) is None
    assert exported.accuracy_drop_failure(None) is None
    failure = exported.accuracy_drop_failure(2.0)
    assert "tflite int8" in failure and "tflite float16 (" not in failure


def test_convert_refuses_int8_without_calibration(wide_classifier):
    with pytest.raises(DataError, match="at least 10"):
        convert(wide_classifier, QuantizationConfig("int8"), np.zeros((3, 32, 32, 3), np.uint8))




def test_conversion_failure_is_one_line_and_keeps_every_other_export(tmp_path):
    """A trusted extractor with an op TFLite has no kernel for (Erfinv): each mode's failure is
    named in one line (exit 4, no traceback); the graph, the SavedModel, the reports and the
    export report of what was written (opened as trusted, like the extractor) are all there."""
    import json

    from tests.fixtures_hub import module_kernel, save_tf2_module

    module = save_tf2_module(tmp_path / "module", module_kernel(), 32, "tflite_unsupported")
    out = tmp_path / "out"
    result = CliRunner().invoke(retrain_main, retrain_args(
        tmp_path, make_color_image_dir(tmp_path / "colors", per_class=6),
        "--tflite_output_file", str(out / "m.tflite"), "--tflite_quantization", "none",
        "--tflite_quantization", "float16", "--saved_model_dir", str(out / "saved_model"),
        "--trust_model", "--json", extractor=str(module), steps=10))
    assert result.exit_code == 4, result.output
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and "Traceback" not in result.stderr
    for mode in ("none", "float16"):
        assert f"to TFLite ({mode}): 'tf.Erfinv' op is neither" in error_lines[0]
        assert not (out / f"m_{mode}.tflite").exists()
    assert "drop --tflite_output_file" in error_lines[0]
    for kept in ("graph.pb", "labels.txt", "saved_model/saved_model.pb", "report.html",
                 "metrics.json"):
        assert (out / kept).is_file(), kept
    document = json.loads(result.stdout)
    assert document["error"]["exit_code"] == 4 and "tflite_output_file" not in document["outputs"]
    assert [row["artifact"] for row in document["exports"]] == ["frozen graph", "saved_model"]
