"""`retrain --labels_csv --multi_label` end to end on images with two colour halves, labelled with
the colours present: metrics, thresholds (never from test), exports, label-image and the gates."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import retrainer
from retrainer.cli.label_image import main as label_image_main
from retrainer.data.split import TESTING, assign_split

COLOURS = {"red": (230, 20, 20), "green": (20, 210, 30), "blue": (30, 40, 220), "": (0, 0, 0)}


def _write_halves(path: Path, left: str, right: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[:, :16] = COLOURS[left]
    pixels[:, 16:] = COLOURS[right]
    noise = rng.integers(-25, 26, pixels.shape)
    Image.fromarray(np.clip(pixels.astype(int) + noise, 0, 255).astype(np.uint8)).save(path)


def make_halves_dataset(root: Path, count: int = 96) -> Path:
    """`root`/images/*.png and `root`/labels.csv; returns the CSV."""
    (root / "images").mkdir(parents=True)
    names = list(COLOURS)
    rows = []
    for index in range(count):
        left, right = names[index % 4], names[(index // 4 + index) % 3]
        if not left and not right:
            right = "red"
        _write_halves(root / "images" / f"img_{index:03d}.png", left, right, index)
        labels = sorted({name for name in (left, right) if name})
        rows.append((f"img_{index:03d}.png", ";".join(labels)))
    with open(root / "labels.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(("path", "labels"))
        writer.writerows(rows)
    return root / "labels.csv"


def _config(root: Path, csv_file: Path, **overrides):
    from retrainer.config import RetrainConfig

    out = root / "out"
    return RetrainConfig(
        image_dir=root / "images", labels_csv=csv_file, multi_label=True,
        output_graph=out / "graph.pb", output_labels=out / "labels.txt",
        summaries_dir=out / "logs", bottleneck_dir=root / "bottlenecks",
        checkpoint_path=out / "ckpt" / "head", audit_file=out / "audit.json",
        metrics_file=out / "metrics.json", report_html=out / "report.html",
        tfhub_module="tiny_test", show_progress=False, testing_percentage=20,
        validation_percentage=20, **overrides)


@dataclasses.dataclass(frozen=True)
class MultiLabelRun:
    root: Path
    csv_file: Path
    config: object
    result: object


@pytest.fixture(scope="module")
def multi_label_run(tmp_path_factory) -> MultiLabelRun:
    from retrainer.pipeline import run

    root = tmp_path_factory.mktemp("halves")
    csv_file = make_halves_dataset(root)
    config = _config(root, csv_file, saved_model_dir=root / "out" / "saved_model",
                     tflite_output_file=root / "out" / "model.tflite",
                     tflite_quantization=("none", "int8"), tflite_calibration_images=20,
                     onnx_output_file=root / "out" / "model.onnx")
    return MultiLabelRun(root, csv_file, config, run(config))


def test_metrics_document_and_thresholds(multi_label_run):
    document = json.loads(multi_label_run.config.metrics_file.read_text())
    figures = document["multi_label"]
    assert set(figures) >= {"micro_f1", "macro_f1", "mean_average_precision", "exact_match",
                            "thresholds", "per_class", "validation"}
    assert set(figures["thresholds"]) == {"blue", "green", "red"}
    assert figures["micro_f1"] > 0.8 and figures["mean_average_precision"] > 0.8
    assert set(figures["per_class"]["red"]) == {"precision", "recall", "f1", "average_precision",
                                                "support"}
    assert multi_label_run.result.to_json()["multi_label"]["micro_f1"] == figures["micro_f1"]
    meta = json.loads(Path(f"{multi_label_run.config.output_graph}.meta.json").read_text())
    assert meta["multi_label"]["thresholds"] == figures["thresholds"]
    report = multi_label_run.config.report_html.read_text()
    assert "Per-label metrics" in report and "micro-F1" in report


def test_counts_test_column_and_totals_count_every_label(multi_label_run):
    """counts: an image once per label; split_sizes and the summary's total row: images;
    test_per_class: per label, the test images with it that got it at its threshold."""
    from retrainer.cli._summary import summary_lines

    result = multi_label_run.result
    with open(multi_label_run.csv_file, newline="") as stream:
        rows = list(csv.reader(stream))[1:]
    expected: dict[str, dict[str, int]] = {}
    sizes: dict[str, int] = {}
    for path, labels in rows:
        split = assign_split(path, 20, 20)
        sizes[split] = sizes.get(split, 0) + 1
        for label in labels.split(";"):
            row = expected.setdefault(label, {})
            row[split] = row.get(split, 0) + 1
    assert {label: {k: v for k, v in row.items() if v} for label, row in result.counts.items()
            } == expected
    assert result.to_json()["split_sizes"] == sizes
    test = result.multi_label.test
    for label, row in zip(result.labels, test.per_class):
        hits = result.test_per_class[label]
        assert hits["total"] == row.support == expected[label].get(TESTING, 0)
        assert hits["correct"] == round(row.recall * row.support)
    lines = summary_lines(result)
    images_row = next(line for line in lines if line.split()[:1] == ["images"])
    assert [int(value) for value in images_row.split()[1:]] == [
        sizes.get(split, 0) for split in ("training", "validation", "testing")]
    assert any("test found" in line for line in lines)


def test_audit_and_heat_map_choice_count_a_top1_in_the_label_set_as_right(multi_label_run):
    from retrainer.data.collection import ImageFile
    from retrainer.reports.explanations import choose_images

    audit = json.loads(multi_label_run.config.audit_file.read_text())
    assert audit["test_accuracy"] == pytest.approx(multi_label_run.result.test_accuracy)
    if not audit["leaked_test_images"]:
        assert audit["leak_adjusted_test_accuracy"] == pytest.approx(audit["test_accuracy"])
    images = [ImageFile(Path(), f"{n}.png", first, "testing", label_indices=indices)
              for n, (first, indices) in enumerate([(0, (0, 2)), (1, (1,)), (2, (2, 0))])]
    evaluation = type("Evaluation", (), {"positions": np.array([0, 1, 2]),
                                         "predictions": np.array([2, 0, 0])})
    chosen = choose_images(images, evaluation, ("blue", "green", "red"), 3)
    assert [(item.relpath, item.true_label, item.correct) for item in chosen] == [
        ("1.png", "green", False), ("2.png", "red;blue", True), ("0.png", "blue;red", True)]


def test_thresholds_never_look_at_the_test_split(multi_label_run, tmp_path):
    """Scramble the test images' labels: the thresholds stay, the test figures change."""
    from retrainer.pipeline import run

    with open(multi_label_run.csv_file, newline="") as stream:
        rows = list(csv.reader(stream))
    scrambled = [rows[0]] + [
        [path, "blue" if assign_split(path, 20, 20) == TESTING else labels]
        for path, labels in rows[1:]]
    other = tmp_path / "scrambled.csv"
    with open(other, "w", newline="") as stream:
        csv.writer(stream).writerows(scrambled)
    config = dataclasses.replace(_config(multi_label_run.root, other),
                                 output_graph=tmp_path / "g.pb",
                                 output_labels=tmp_path / "l.txt",
                                 metrics_file=tmp_path / "m.json", report_html=None,
                                 checkpoint_path=tmp_path / "c" / "h",
                                 summaries_dir=tmp_path / "logs", audit_file=tmp_path / "a.json")
    result = run(config).to_json()["multi_label"]
    original = multi_label_run.result.to_json()["multi_label"]
    assert result["thresholds"] == original["thresholds"]
    assert result["micro_f1"] != original["micro_f1"]


def test_every_export_scores_micro_f1_and_label_image_lists_the_labels(multi_label_run,
                                                                        tmp_path):
    rows = {row["artifact"]: row for row in multi_label_run.result.exports}
    assert list(rows) == ["frozen graph", "tflite none", "tflite int8", "saved_model", "onnx"]
    for name, row in rows.items():
        assert row["metric"] == "micro_f1" and row["accuracy"] > 0.7, name
        assert row["macro_f1"] is not None and row["mean_average_precision"] is not None
    image = tmp_path / "red_green.png"
    _write_halves(image, "red", "green", 999)
    runner = CliRunner()
    for model in (multi_label_run.config.output_graph, multi_label_run.config.saved_model_dir,
                  multi_label_run.root / "out" / "model_none.tflite",
                  multi_label_run.root / "out" / "model.onnx"):
        answer = runner.invoke(label_image_main, ["--graph", str(model), "--json", str(image)],
                               catch_exceptions=False)
        document = json.loads(answer.output)
        assert [entry["label"] for entry in document["labels"]] in (["red", "green"],
                                                                    ["green", "red"]), model
        assert "label" not in document and len(document["predictions"]) == 3
        text = runner.invoke(label_image_main, ["--graph", str(model), str(image)],
                             catch_exceptions=False)
        assert sorted(line.split()[0] for line in text.output.splitlines()) == ["green", "red"]
        with retrainer.load(model) as loaded:  # the Python API gives the same labels
            (prediction,) = loaded.predict(image)
        assert prediction.labels == [(entry["label"], pytest.approx(entry["score"], abs=1e-6))
                                     for entry in document["labels"]]


def test_saved_model_bytes_signature_returns_labels_over_thresholds(multi_label_run, tmp_path):
    import tensorflow as tf

    image = tmp_path / "blue.png"
    _write_halves(image, "blue", "", 7)
    model = tf.saved_model.load(str(multi_label_run.config.saved_model_dir))
    answer = model.signatures["serving_bytes"](image_bytes=tf.constant([image.read_bytes()]))
    labels = [value.decode() for value in answer["labels"].numpy()[0]]
    assert labels == ["blue", "", ""]
    assert answer["scores"].numpy()[0, 0] > 0.5 and answer["scores"].numpy()[0, 1] == 0.0


def test_accuracy_gate_reads_micro_f1(multi_label_run, tmp_path):
    from retrainer.cli.retrain import main as retrain_main

    arguments = ["--image_dir", str(multi_label_run.root / "images"),
                 "--labels_csv", str(multi_label_run.csv_file), "--multi_label",
                 "--tfhub_module", "tiny_test", "--testing_percentage", "20",
                 "--validation_percentage", "20",
                 "--bottleneck_dir", str(multi_label_run.root / "bottlenecks"),
                 "--output_graph", str(tmp_path / "g.pb"), "--output_labels",
                 str(tmp_path / "l.txt"), "--summaries_dir", str(tmp_path / "logs"),
                 "--checkpoint_path", str(tmp_path / "c" / "h"), "--audit_file",
                 str(tmp_path / "a.json"), "--metrics_file", str(tmp_path / "m.json"),
                 "--report_html", "", "--assert_accuracy_at_least", "1.0", "--json"]
    result = CliRunner().invoke(retrain_main, arguments)
    document = json.loads(result.stdout)
    gate, = document["quality_gates"]
    if document["multi_label"]["micro_f1"] < 1.0:
        assert result.exit_code == 6
        assert gate["metric"] == "micro_f1" and "micro-F1" in document["error"]["message"]
        assert not (tmp_path / "g.pb").exists()
    assert gate["value"] == document["multi_label"]["micro_f1"]
    help_text = CliRunner().invoke(retrain_main, ["--help"]).output
    assert "With --multi_label: the micro-F1" in " ".join(help_text.split())
