"""Reports end to end: the metrics file and --json, the HTML report, the PNGs, TensorBoard's image,
the end-of-run summary, and the quality gates (exit 6, previous exports untouched)."""

from __future__ import annotations

import base64
import html
import html.parser
import io
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from retrainer.cli.retrain import main
from retrainer.errors import EXIT_QUALITY_GATE, EXIT_USAGE
from retrainer.result import FORMAT
from tests.fixtures_data import make_color_image_dir
from tests.fixtures_pipeline import retrain_args

BARELY_TRAINED = ("--learning_rate", "0.00001", "--seed", "3")  # gets some test images wrong


def invoke(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.fixture
def colors(tmp_path) -> Path:
    root = make_color_image_dir(tmp_path / "colors", per_class=10)
    (root / "red" / "<script>alert(1)<.txt").write_text("not an image")  # skipped, escaped
    return root


class _Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_metrics_file_and_json_are_one_document(tmp_path, colors):
    result = invoke([*retrain_args(tmp_path, colors, *BARELY_TRAINED), "--json"])
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    out = tmp_path / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    timing = ("seconds", "peak_memory_gib")  # the file's stop before its own write
    assert {k: v for k, v in metrics.items() if k not in timing} == \
        {k: v for k, v in document.items() if k not in timing}
    assert set(metrics["seconds"]) < set(document["seconds"])
    assert all(0 <= metrics["seconds"][part] <= document["seconds"][part] + 1e-9
               for part in metrics["seconds"] if part not in ("total", "other"))
    assert document["format"] == FORMAT == "retrainer-metrics/1"
    labels = document["labels"]
    test = document["metrics"]["testing"]
    matrix = test["confusion_matrix"]
    assert len(matrix) == len(labels) and all(len(row) == len(labels) for row in matrix)
    assert sum(map(sum, matrix)) == document["test_count"] == test["count"] > 0
    assert [sum(row) for row in matrix] == [document["counts"][label]["testing"] for label in labels]
    assert test["accuracy"] == pytest.approx(document["test_accuracy"])
    assert set(test["per_class"][labels[0]]) == {"precision", "recall", "f1", "support"}
    validation = document["metrics"]["validation"]  # the whole split, each image once
    assert validation["count"] == sum(row["validation"] for row in document["counts"].values())
    assert len(document["misclassified"]) == sum(map(sum, matrix)) - sum(
        matrix[i][i] for i in range(len(labels)))
    wrong = document["misclassified"][0]
    assert wrong["true"] != wrong["predicted"] and 0 < wrong["score"] <= 1
    assert [point["step"] for point in document["history"]] == [0, 10, 20, 30, 39]
    assert set(document["history"][0]) == {"step", "train_accuracy", "cross_entropy",
                                           "validation_accuracy", "validation_count",
                                           "validation_cross_entropy"}
    assert document["extractor"] == {"name": "tiny_test", "id": "tiny_test-v1",
                                     "input_size": [32, 32], "vector_size": 16}
    assert document["flags"]["image_dir"] == str(colors)
    assert document["flags"]["learning_rate"] == 0.00001
    assert document["skipped"] == [{"path": "red/<script>alert(1)<.txt",
                                    "reason": "not an image file (extension '.txt')"}]
    assert document["quality_gates"] == []
    assert document["outputs"]["report_html"] == str(out / "report.html")
    assert {"total", "train", "evaluate"} <= set(document["seconds"])


def test_html_report_is_self_contained_and_has_the_pictures(tmp_path, colors):
    assert invoke(retrain_args(tmp_path, colors, *BARELY_TRAINED)).exit_code == 0
    out = tmp_path / "out"
    text = (out / "report.html").read_text()
    document = json.loads((out / "metrics.json").read_text())
    parser = _Tags()
    parser.feed(text)
    tags = [tag for tag, _ in parser.tags]
    assert "script" not in tags and "link" not in tags and "iframe" not in tags
    assert "http://" not in text and "https://" not in text and "url(" not in text
    for tag, attrs in parser.tags:
        assert attrs.get("href", "#").startswith("#"), (tag, attrs)
        if "src" in attrs:
            assert tag == "img" and attrs["src"].startswith("data:image/png;base64,")
    images = {attrs["class"]: [] for tag, attrs in parser.tags if tag == "img"}
    for tag, attrs in parser.tags:
        if tag == "img":
            images[attrs["class"]].append(base64.b64decode(attrs["src"].split(",", 1)[1]))
    curves, confusion = images["plot"]
    assert curves == (out / "training_curves.png").read_bytes()
    assert confusion == (out / "confusion_matrix.png").read_bytes()
    assert len(images["thumbnail"]) == len(document["misclassified"]) > 0
    assert Image.open(io.BytesIO(images["thumbnail"][0])).size == (112, 112)
    assert Image.open(io.BytesIO(curves)).size[0] >= 800
    for section in ("Dataset", "Training curves", "Confusion matrix", "Per-class metrics",
                    "Misclassified test images"):
        assert f"<h2>{section}</h2>" in text
    assert "&lt;script&gt;alert(1)&lt;.txt" in text  # the skipped file's name, escaped
    wrong = document["misclassified"][0]
    assert f"true: {wrong['true']}<br>predicted: {wrong['predicted']}" in text
    # written before the end: it says so, and its figure is the metrics file's before the reports
    until_report = re.search(r"([0-9.]+) s from the run's start to this report \(the summary's "
                             r"Took adds writing the reports and the exit\)", html.unescape(text))
    assert until_report is not None
    assert float(until_report.group(1)) <= round(document["seconds"]["total"], 1)


def test_confusion_matrix_is_a_tensorboard_image(tmp_path, colors):
    import tensorflow as tf

    assert invoke(retrain_args(tmp_path, colors)).exit_code == 0
    (events,) = (tmp_path / "out" / "logs" / "test").glob("events.out.tfevents.*")
    images = [value for event in tf.compat.v1.train.summary_iterator(str(events))
              for value in event.summary.value if value.tag == "confusion_matrix"]
    assert len(images) == 1
    pixels = tf.io.decode_png(tf.make_ndarray(images[0].tensor)[2])
    png = Image.open(tmp_path / "out" / "confusion_matrix.png")
    assert tuple(pixels.shape[:2]) == (png.height, png.width)


@pytest.mark.filterwarnings("error::UserWarning")
def test_confusion_matrix_draws_any_class_name_without_a_warning():
    """Class names the font lacks (CJK, emoji) or too long for an axis: U+XXXX and shortened,
    not empty boxes and matplotlib's "Glyph missing" warning on the user's stderr."""
    import numpy as np

    from retrainer.reports.plots import _axis_label, confusion_matrix_png

    labels = ["玫瑰 🌹", "c" * 200, "wild tulips ü"]
    png = confusion_matrix_png(np.eye(3, dtype=np.int64), labels, "Confusion matrix")
    assert Image.open(io.BytesIO(png)).format == "PNG"
    assert [_axis_label(label) for label in labels] == [
        "U+73AB U+7470 U+1F339", "c" * 31 + "…", "wild tulips ü"]


@pytest.mark.parametrize("solver", ["lbfgs", "sgd"])
def test_a_curve_of_one_point_is_drawn(solver):
    """One L2 strength (no validation split to choose it) or one SGD evaluation: the lone point
    shows in each panel (a line through one point draws nothing)."""
    import numpy as np

    from retrainer.reports.plots import training_curves_png
    from retrainer.training.head_types import EvalPoint

    point = EvalPoint(step=36, train_accuracy=0.76, cross_entropy=0.67,
                      validation_accuracy=None, validation_count=0)
    pixels = np.asarray(Image.open(io.BytesIO(training_curves_png([point], solver))).convert("RGB"))
    blue = np.abs(pixels.astype(int) - (31, 119, 180)).sum(axis=2) < 60  # matplotlib's first colour
    assert _blobs(blue) >= 4  # per panel: the legend's sample and the point


@settings(max_examples=25, deadline=None, derandomize=True)
@given(steps=st.lists(st.integers(0, 60), min_size=1, max_size=4, unique=True).map(sorted),
       solver=st.sampled_from(["lbfgs", "sgd"]))
def test_curves_count_steps_in_whole_numbers(steps, solver):
    """A tiny set's few evaluations (one L2 strength, two SGD points) still get whole-number
    step ticks, not 35.96, 35.98, ..."""
    from retrainer.reports.plots import training_curves_figure
    from retrainer.training.head_types import EvalPoint

    history = [EvalPoint(step=step, train_accuracy=0.5 + step / 200, cross_entropy=1 - step / 100,
                         validation_accuracy=None, validation_count=0) for step in steps]
    for axes in training_curves_figure(history, solver).axes:
        low, high = axes.get_xlim()
        shown = [tick for tick in axes.get_xticks() if low <= tick <= high]
        assert shown and all(float(tick).is_integer() for tick in shown), (steps, shown)


def _blobs(mask) -> int:
    """Connected groups of True pixels (8-neighbours)."""
    seen, count = set(), 0
    pixels = set(zip(*mask.nonzero()))
    for start in pixels:
        if start in seen:
            continue
        count += 1
        stack = [start]
        seen.add(start)
        while stack:
            y, x = stack.pop()
            for near in ((y + dy, x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)):
                if near in pixels and near not in seen:
                    seen.add(near)
                    stack.append(near)
    return count


def test_long_names_wrap_in_their_table_cell_and_numbers_never_break():
    from retrainer.reports.html import breakable, table

    long_name = "c" * 120
    assert breakable(long_name) == "<wbr>".join(["c" * 48, "c" * 48, "c" * 24])
    assert breakable("a <b>&amp; " + "é" * 50) == "a &lt;b&gt;&amp;amp; " + "é" * 48 + "<wbr>" + "éé"
    assert breakable("red/<script>alert(1)<.txt") == "red/&lt;script&gt;alert(1)&lt;.txt"
    assert breakable(1234567.5) == "1234567.5"
    assert "<td>" + breakable(long_name) + "</td>" in table(["class"], [[long_name]])


def test_each_split_gets_its_table_or_a_line_saying_it_is_empty():
    import numpy as np

    from retrainer.reports.metrics import split_metrics
    from retrainer.reports.sections import split_tables

    test = split_metrics(np.array([0, 1, 1]), np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]]))
    validation = split_metrics(np.zeros(0, np.int64), np.zeros((0, 2)))
    body = split_tables((("testing", test), ("validation", validation)), ("class", "recall"),
                        lambda split: [(name, row.recall)
                                       for name, row in zip("ab", split.per_class)])
    assert "Testing split, N=3:" in body and "No validation images." in body
    assert "<td>a</td><td>1.0</td>" in body and "<td>b</td><td>0.5</td>" in body


def test_summary_gives_whole_split_figures_per_class_table_and_confusions(tmp_path, colors):
    result = invoke(retrain_args(tmp_path, colors, *BARELY_TRAINED))
    document = json.loads((tmp_path / "out" / "metrics.json").read_text())
    validation = document["metrics"]["validation"]
    lines = result.stdout.splitlines()
    assert (f"Validation accuracy = {validation['accuracy'] * 100:.1f}% "
            f"(N={validation['count']} images, the whole validation split)") in lines
    assert f"(N={document['validation_count']})" in lines[1]  # retrain.py's sampled batch, kept
    assert lines[2].startswith("Validation accuracy = ")  # right below it: the whole split
    header = lines.index("Per-class metrics (test split):")
    blue = document["metrics"]["testing"]["per_class"]["blue"]
    percent = [("n/a" if value is None else f"{value * 100:.1f}%")
               for value in (blue["precision"], blue["recall"], blue["f1"])]
    assert lines[header + 2].split() == ["blue", *percent, str(blue["support"])]
    confused = document["metrics"]["testing"]["most_confused"][0]
    assert f"{confused['true']} -> {confused['predicted']} ({confused['count']})" in result.stdout


def test_reports_can_be_turned_off_and_paths_are_checked_first(tmp_path, colors):
    assert invoke([*retrain_args(tmp_path, colors), "--metrics_file", "", "--report_html", ""]
                  ).exit_code == 0
    out = tmp_path / "out"
    assert not (out / "metrics.json").exists() and not (out / "report.html").exists()
    assert not (out / "training_curves.png").exists()
    (tmp_path / "taken").mkdir()
    result = invoke([*retrain_args(tmp_path, colors), "--report_html", str(tmp_path / "taken")])
    assert result.exit_code == EXIT_USAGE and "--report_html" in result.stderr
    assert "Step 0" not in result.stderr  # before any training
    same = invoke([*retrain_args(tmp_path, colors), "--report_html", str(out / "m.json"),
                   "--metrics_file", str(out / "m.json")])
    assert same.exit_code == EXIT_USAGE and "are the same file" in same.stderr
    bad = invoke([*retrain_args(tmp_path, colors), "--assert_accuracy_at_least", "90"])
    assert bad.exit_code == EXIT_USAGE and "--assert_accuracy_at_least" in bad.stderr


def exported_files(out: Path) -> dict[str, tuple[bytes, int]]:
    """Every export under `out` (not the reports and logs) -> (bytes, mtime_ns)."""
    reports = {"metrics.json", "report.html", "training_curves.png", "confusion_matrix.png",
               "audit.json"}  # reports, written by every run
    return {str(path.relative_to(out)): (path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted(out.rglob("*")) if path.is_file() and path.name not in reports
            and "logs" not in path.parts}


def test_failed_gate_exits_6_and_leaves_the_previous_export_untouched(tmp_path, colors):
    args = retrain_args(tmp_path, colors, "--intermediate_store_frequency", "15",
                        "--saved_model_dir", str(tmp_path / "out" / "saved_model"))
    assert invoke([*args, "--assert_accuracy_at_least", "0.5"]).exit_code == 0  # passes: exported
    out = tmp_path / "out"
    before = exported_files(out)
    assert {"graph.pb", "graph.pb.meta.json", "labels.txt", "checkpoint/head.index",
            "intermediate/intermediate_15.pb", "saved_model/saved_model.pb"} <= set(before)

    result = invoke([*args, *BARELY_TRAINED, "--assert_accuracy_at_least", "0.99", "--json"])
    assert result.exit_code == EXIT_QUALITY_GATE == 6
    printed = json.loads(result.stdout)  # CI scripts still get the figures of a failed run
    assert printed["error"]["exit_code"] == 6
    assert printed["error"]["message"] in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    document = json.loads((out / "metrics.json").read_text())
    reached = document["metrics"]["testing"]["accuracy"]
    assert errors == [result.stderr.splitlines()[-1]]
    assert errors[0].startswith(f"Error: accuracy {reached * 100:.2f}% on the test split "
                                f"(N={document['test_count']}) is below "
                                "--assert_accuracy_at_least 0.99 (99.00%)")
    assert exported_files(out) == before  # same bytes, same mtimes: nothing rewritten
    assert not [path for path in out.rglob("*") if path.name.endswith(".tmp")]
    gate = document["quality_gates"][0]
    assert (gate["flag"], gate["threshold"], gate["passed"]) == ("assert_accuracy_at_least", 0.99,
                                                                  False)
    assert printed["test_accuracy"] == document["test_accuracy"]
    assert "output_graph" not in document["outputs"] and "<p class=\"fail\">FAILED" in (
        out / "report.html").read_text()


def test_recall_gate_and_validation_fallback(tmp_path, colors):
    result = invoke([*retrain_args(tmp_path, colors, *BARELY_TRAINED), "--testing_percentage",
                     "0", "--validation_percentage", "30", "--assert_recall_at_least", "0.95"])
    assert result.exit_code == EXIT_QUALITY_GATE
    assert "Error: recall of class '" in result.stderr and "on the validation split" in result.stderr
    assert not (tmp_path / "out" / "graph.pb").exists()
    unmeasured = invoke([*retrain_args(tmp_path / "b", colors), "--testing_percentage", "0",
                         "--validation_percentage", "0", "--assert_accuracy_at_least", "0.1"])
    assert unmeasured.exit_code == EXIT_QUALITY_GATE and "cannot be checked" in unmeasured.stderr


def test_default_report_paths(isolated_home, colors):
    result = invoke(["--image_dir", str(colors), "--tfhub_module", "tiny_test",
                     "--how_many_training_steps", "5"])
    assert result.exit_code == 0, result.stderr
    for name in ("metrics.json", "report.html", "training_curves.png", "confusion_matrix.png"):
        assert (isolated_home / "retrain_output" / name).is_file(), name


def test_pictures_are_drawn_once_per_content_and_kept_under_the_cache(tmp_path, monkeypatch):
    """A rerun that would draw the same picture reads it back; other data draws anew."""
    import types

    import numpy as np

    from retrainer.reports import writer
    from retrainer.reports.options import ReportOptions
    from retrainer.training.head_types import EvalPoint

    options = ReportOptions(tmp_path / "m.json", tmp_path / "r.html", tmp_path / "logs",
                            None, None, 0)
    history = [EvalPoint(10, 0.8, 0.5, 0.7, 20, 0.6), EvalPoint(20, 0.9, 0.3, 0.75, 20, 0.55)]
    split = types.SimpleNamespace(count=20, confusion_matrix=np.array([[9, 1], [2, 8]]))
    first = writer.draw_pictures(options, ("a", "b"), history, "lbfgs", "testing", split,
                                 tmp_path / "cache")
    assert len(list((tmp_path / "cache").rglob("*.png"))) == 2
    drawn = []
    for name in ("confusion_matrix_png", "training_curves_png"):
        monkeypatch.setattr(writer, name, lambda *args, name=name: drawn.append(name) or b"")
    again = writer.draw_pictures(options, ("a", "b"), history, "lbfgs", "testing", split,
                                 tmp_path / "cache")
    assert again == first and drawn == []
    split.confusion_matrix = np.array([[8, 2], [2, 8]])
    writer.draw_pictures(options, ("a", "b"), history[:1], "lbfgs", "testing", split,
                         tmp_path / "cache")
    assert sorted(drawn) == ["confusion_matrix_png", "training_curves_png"]
