"""Property: ANY folder a user brings gives either complete, usable outputs or one `Error:` line and
a documented exit code; never a traceback (tests/fixtures_datasets.py draws the folders).

`retrain` runs in-process with its default flags plus a drawn set of modes (distortions,
fine-tuning, int8/float16 TFLite, float32/int8 ONNX, SavedModel, gates, retrain.py's SGD steps,
--search, a rerun on the warm cache, ...). On exit 0 every output is whole, `label-image`
classifies a picture with each model written and every file of the folder with the frozen graph;
otherwise the exit code is documented and stderr ends with exactly one `Error:` line.

The default suite runs a few drawn datasets with the tiny stand-in extractor, the slow suite more
with the real EfficientNet-Lite0 at its default precision. Longer runs outside CI (SURVEY: log
each failure with its plan and keep drawing):
    RETRAINER_PROPERTY_EXAMPLES=100 RETRAINER_PROPERTY_RANDOM=1 RETRAINER_PROPERTY_SURVEY=1 \\
        RETRAINER_PROPERTY_LOG=runs.jsonl pytest tests/test_properties_pipeline.py -k any_folder
Every failing example found is kept below as an explicit regression test (`REGRESSIONS`).
"""

from __future__ import annotations

import json
import os
import tempfile
import traceback
from pathlib import Path
from typing import Optional

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from retrainer.cli.label_image import main as label_image_main
from retrainer.cli.retrain import main as retrain_main
from retrainer.config import DEFAULT_EXTRACTOR
from retrainer.errors import (
    EXIT_DATA,
    EXIT_EXPORT_MISMATCH,
    EXIT_MODEL,
    EXIT_OK,
    EXIT_QUALITY_GATE,
    EXIT_UNREADABLE_IMAGES,
    EXIT_USAGE,
)
from retrainer.pipeline import search
from tests.fixtures_datasets import (
    JUNK,
    Copy,
    DatasetPlan,
    FilePlan,
    Junk,
    Link,
    Picture,
    PicturePool,
    datasets,
    original,
    write_dataset,
)
from tests.fixtures_faults import assert_complete_graph, temp_files
from tests.fixtures_pipeline import retrain_args

DOCUMENTED_EXITS = {EXIT_OK, EXIT_USAGE, EXIT_DATA, EXIT_MODEL, EXIT_QUALITY_GATE,
                    EXIT_EXPORT_MISMATCH}
EXAMPLES = os.environ.get("RETRAINER_PROPERTY_EXAMPLES")
# Long runs: log each failure (with its plan) to RETRAINER_PROPERTY_LOG and go on drawing.
SURVEY = os.environ.get("RETRAINER_PROPERTY_SURVEY") == "1"
RANDOM = os.environ.get("RETRAINER_PROPERTY_RANDOM") == "1"  # else the same draws every run
LOG = os.environ.get("RETRAINER_PROPERTY_LOG")  # one JSON line per drawn dataset, appended
# The modes drawn on top of the defaults (retrain flags; paths are added by `mode_flags`).
MODES = ("distortions", "fine_tuning", "tflite_int8", "tflite_float16", "onnx_float32",
         "onnx_int8", "saved_model", "accuracy_gate", "recall_gate", "export_drop",
         "keep_duplicates", "skip_audit", "json", "sgd", "search", "rerun")
# Export modes: <format>_<quantization> -> (path flag, quantization flag); float32 is "none".
EXPORT_FLAGS = {"tflite": ("--tflite_output_file", "--tflite_quantization"),
                "onnx": ("--onnx_output_file", "--onnx_quantization")}


def exported_files(modes: tuple[str, ...], out: Path) -> dict[str, dict[str, Path]]:
    """{format: {quantization: file}} for the export modes drawn: one quantization gets the
    path given (out/model.<format>), several a _<quantization> suffix each."""
    files: dict[str, dict[str, Path]] = {}
    for file_format in EXPORT_FLAGS:
        quantizations = [mode.removeprefix(f"{file_format}_").replace("float32", "none")
                         for mode in modes if mode.startswith(f"{file_format}_")]
        path = out / f"model.{file_format}"
        files[file_format] = {quantization: path if len(quantizations) == 1 else
                              path.with_name(f"model_{quantization}.{file_format}")
                              for quantization in quantizations}
    return files


def mode_flags(modes: tuple[str, ...], out: Path, extractor: str) -> list[str]:
    flags: list[str] = []
    for file_format, files in exported_files(modes, out).items():
        path_flag, quantization_flag = EXPORT_FLAGS[file_format]
        if files:
            flags += [path_flag, str(out / f"model.{file_format}")]
        for quantization in files:
            flags += [quantization_flag, quantization]
    for mode in modes:
        flags += {
            "distortions": ["--flip_left_right", "--random_crop", "10", "--random_scale", "10",
                            "--random_brightness", "10", "--distorted_variants", "1"],
            "fine_tuning": ["--do_fine_tuning", "--fine_tune_epochs", "1"],
            "saved_model": ["--saved_model_dir", str(out / "saved_model")],
            "accuracy_gate": ["--assert_accuracy_at_least", "0.5"],
            "recall_gate": ["--assert_recall_at_least", "0.3"],
            "export_drop": ["--max_export_accuracy_drop", "5"],
            "keep_duplicates": ["--keep_duplicates_in_one_split"],
            "skip_audit": ["--skip_audit"],
            "json": ["--json"],
            "sgd": ["--how_many_training_steps", "20"],  # retrain.py's SGD loop, not lbfgs
            # the run's extractor, plain and distorted (`check_pipeline` leaves out the
            # installed EfficientNet-Lite variants: each would cost a full extraction)
            "search": ["--search", "--search_modules", extractor],
        }.get(mode, [])
    return flags


def drawn_modes() -> st.SearchStrategy[tuple[str, ...]]:
    # Two usage errors are left out, so that the draw reaches the pipeline (each is tested where
    # its flag is): --max_export_accuracy_drop without an export to compare (test_tflite_export),
    # --keep_duplicates_in_one_split with --skip_audit (test_audit).
    return st.lists(st.sampled_from(MODES), max_size=4, unique=True).map(
        lambda modes: tuple(sorted(modes))).filter(_usable)


def _usable(modes: tuple[str, ...]) -> bool:
    exports = any(mode.startswith((*EXPORT_FLAGS, "saved_model")) for mode in modes)
    return ("export_drop" not in modes or exports) and not {
        "keep_duplicates", "skip_audit"} <= set(modes)


def check_pipeline(plan: DatasetPlan, pool: PicturePool, work: Path, extractor: str) -> int:
    """Write `plan`, run `retrain` on it and check the invariant. Returns the exit code."""
    images = write_dataset(plan, work / "images", pool)
    out = work / "out"
    args = [*retrain_args(work, images, extractor=extractor, steps=None),
            "--testing_percentage", str(plan.testing_percentage),
            "--validation_percentage", str(plan.validation_percentage),
            *mode_flags(plan.modes, out, extractor)]
    result = _retrain(args)
    try:
        _check_result(plan, result, images, out)
        if "rerun" in plan.modes and result.exit_code == EXIT_OK:
            _check_rerun(plan, _retrain([*args, "--json"]), images, out)
    except Exception as failure:  # a failed check, or output it cannot parse
        _log(plan, result.exit_code, result.stderr, failure)
        if not SURVEY:
            raise
    else:
        _log(plan, result.exit_code, result.stderr)
    return result.exit_code


def _retrain(args: list[str]):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(search, "BUILT_IN_EXTRACTORS", ())  # --search: only --search_modules
        return CliRunner().invoke(retrain_main, args)


def _check_rerun(plan: DatasetPlan, result, images: Path, out: Path) -> None:
    """The same run again: every vector (plain and distorted) comes from the cache, and the
    outputs are rewritten whole."""
    assert result.exit_code == EXIT_OK, result.output
    document = json.loads(result.stdout)
    assert document["bottlenecks_computed"] == 0, document
    assert document["distorted"] is None or document["distorted"]["computed"] == 0, document
    check_outputs(plan, images, out, document)


def _check_result(plan: DatasetPlan, result, images: Path, out: Path) -> None:
    crash = result.exception if not isinstance(result.exception, (SystemExit, type(None))) else None
    assert crash is None, "".join(traceback.format_exception(*result.exc_info))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.exit_code in DOCUMENTED_EXITS, result.output
    if plan.testing_percentage + plan.validation_percentage > 100:
        assert result.exit_code == EXIT_USAGE, result.output
    elif len({file.folder for file in plan.files}) < 2:  # (flags are checked first)
        assert result.exit_code in (EXIT_USAGE, EXIT_DATA), result.output
    if result.exit_code != EXIT_OK:
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and result.stderr.rstrip("\n").splitlines()[-1] == errors[0], (
            result.stderr)
        if "json" in plan.modes and result.exit_code in (EXIT_QUALITY_GATE, EXIT_EXPORT_MISMATCH):
            assert json.loads(result.stdout)["error"]["exit_code"] == result.exit_code
    if result.exit_code in (EXIT_OK, EXIT_EXPORT_MISMATCH):  # everything was written
        check_outputs(plan, images, out, json.loads(result.stdout) if "json" in plan.modes
                      else None)
    elif result.exit_code == EXIT_QUALITY_GATE:  # nothing exported
        assert not (out / "graph.pb").exists()
    assert temp_files(out.parent) == []


def check_outputs(plan: DatasetPlan, images: Path, out: Path, document: Optional[dict]) -> None:
    """Every output is whole, and label-image classifies a picture of the dataset with each
    model written."""
    assert_complete_graph(out / "graph.pb")
    labels = (out / "labels.txt").read_text("utf-8").splitlines()
    assert len(labels) >= 2 and all(labels)
    metadata = json.loads((out / "graph.pb.meta.json").read_text("utf-8"))
    assert metadata["labels"] == labels
    metrics = json.loads((out / "metrics.json").read_text("utf-8"))
    assert metrics["labels"] == labels
    assert (out / "report.html").read_text("utf-8").rstrip().endswith("</html>")
    if "skip_audit" not in plan.modes:
        assert json.loads((out / "audit.json").read_text("utf-8"))["format"] >= 1
    if document is not None:
        assert document["labels"] == labels
        if "search" in plan.modes:  # every candidate has a row, the chosen one ran
            rows = {row["name"]: row for row in document["search"]["candidates"]}
            assert len(rows) == 2 and rows[document["search"]["chosen"]]["status"] == "ok"
    models = [out / "graph.pb"]
    if "saved_model" in plan.modes:
        assert (out / "saved_model" / "saved_model.pb").is_file()
        models.append(out / "saved_model")
    for files in exported_files(plan.modes, out).values():
        models += files.values()
    picture = images / next(file.relpath for file in plan.files
                            if isinstance(original(file.content, plan.files), Picture))
    for model in models:
        result = CliRunner().invoke(label_image_main, ["--graph", str(model), "--json",
                                                       str(picture)])
        assert result.exit_code == EXIT_OK, (model, result.output)
        answer = json.loads(result.stdout.splitlines()[0])
        assert answer["label"] in labels, (model, answer)
    check_every_file_classified(plan, images, out / "graph.pb", labels)


def check_every_file_classified(plan: DatasetPlan, images: Path, graph: Path,
                                labels: list[str]) -> None:
    """label-image on every file of the dataset (the first 60) at once: each picture gets a
    label, each other file (junk, a broken link, a pipe) one error line; exit 0 or 5."""
    files = {str(images / file.relpath): isinstance(original(file.content, plan.files), Picture)
             for file in plan.files[:60]}
    result = CliRunner().invoke(label_image_main, ["--graph", str(graph), "--json", *files])
    assert "Traceback" not in result.stderr, result.stderr
    assert result.exit_code == (EXIT_OK if all(files.values()) else EXIT_UNREADABLE_IMAGES), (
        result.output)
    answers = {answer["path"]: answer for answer in map(json.loads, result.stdout.splitlines())}
    assert answers.keys() == files.keys()
    for path, is_picture in files.items():
        assert (answers[path].get("label") in labels) if is_picture else (
            "error" in answers[path]), answers[path]


def _log(plan: DatasetPlan, exit_code: int, stderr: str,
         failure: Optional[Exception] = None) -> None:
    if LOG:
        error = next((line for line in reversed(stderr.splitlines()) if line.startswith("Error:")),
                     None)
        entry = {"exit_code": exit_code, "classes": len(plan.folders), "files": len(plan.files),
                 "modes": plan.modes, "error": error}
        if failure is not None:
            entry.update(failure=f"{type(failure).__name__}: {failure}"[:3000], plan=repr(plan))
        with open(LOG, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(entry, ensure_ascii=False) + "\n")


@pytest.fixture(scope="session")
def picture_pool(fashion_mnist_dir) -> PicturePool:
    return PicturePool(fashion_mnist_dir)


def _settings(examples: int) -> settings:
    # In CI the same draws every run, reported unshrunk (shrinking runs retrain hundreds of
    # times); random runs shrink, for a small regression example to keep.
    phases = (Phase.generate, Phase.shrink) if RANDOM else (Phase.generate,)
    return settings(max_examples=int(EXAMPLES or examples), deadline=None,
                    derandomize=not RANDOM, database=None, print_blob=True, phases=phases,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example])


@_settings(examples=6)
@given(plan=datasets(modes=drawn_modes()))
def test_any_folder_gives_whole_outputs_or_one_error_line(plan, picture_pool):
    with tempfile.TemporaryDirectory() as work:
        check_pipeline(plan, picture_pool, Path(work), "tiny_test")


@pytest.mark.slow
@_settings(examples=10)  # trainable: 224x224 at int8 costs ~3x the tiny extractor
@given(plan=datasets(max_per_class=12, modes=drawn_modes(), trainable=True))
def test_any_folder_with_the_default_extractor(plan, picture_pool):
    with tempfile.TemporaryDirectory() as work:
        check_pipeline(plan, picture_pool, Path(work), DEFAULT_EXTRACTOR)


def _every_shape() -> DatasetPlan:
    """One folder with every shape the issue lists, drawn by hand, so CI always sees them all."""
    roses, dash, long_name, chinese, mirror = "Roses 🌹", "-dash", "c" * 200, "玫瑰", "mirror"
    files = [
        FilePlan(roses, (), "IMG 0001.JPG", Picture("photo:astronaut", "RGB", "JPEG")),
        FilePlan(roses, (), "-rf.png", Picture("photo:coffee", "RGBA", "PNG")),
        FilePlan(roses, (), "cmyk.jpg", Picture("photo:chelsea", "CMYK", "JPEG")),
        FilePlan(roses, ("sub", "deeper"), "sixteen bit.png",
                 Picture("photo:rocket", "I;16", "PNG")),
        FilePlan(roses, (), "palette.gif", Picture("photo:cat", "P", "GIF")),
        FilePlan(roses, (), "ünïcödé 写真.png", Picture("photo:camera", "L", "PNG")),
        FilePlan(roses, (), "one pixel.png", Picture("tiny", "RGB", "PNG")),
        FilePlan(roses, (), "constant.bmp", Picture("constant:0,0,0", "RGB", "BMP")),
        FilePlan(roses, (), "a" * 196 + ".jpg", Picture("huge", "RGB", "JPEG")),
        FilePlan(dash, (), "la.png", Picture("fashion:0", "LA", "PNG")),  # a class of 1
        FilePlan(long_name, (), "q70.jpg", Copy(0, "jpeg70")),  # near copies in another class
        FilePlan(long_name, (), "small.png", Copy(1, "resize50")),
        FilePlan(chinese, (), "x.tiff", Picture("photo:retina", "RGB", "TIFF")),  # a class of 3
        FilePlan(chinese, (), "x copy.tiff", Copy(12)),  # a byte copy in its class
        FilePlan(chinese, (), "x shifted.png", Copy(12, "shift")),
        FilePlan(chinese, (), "x cropped.png", Copy(12, "crop90")),
        FilePlan(chinese, (), "x brighter.png", Copy(12, "brighter")),
        FilePlan(chinese, (), "x flipped.png", Copy(12, "flip")),
        FilePlan(mirror, (), "la.png", Copy(9)),  # the same image under two labels
        FilePlan(mirror, (), "webp.webp", Picture("photo:logo", "RGBA", "WEBP")),
        FilePlan(mirror, (), "phone.jpg", Picture("photo:coffee", "RGB", "JPEG_EXIF_ROTATED")),
        FilePlan(mirror, (), "progressive.jpeg", Picture("photo:chelsea", "RGB",
                                                          "JPEG_PROGRESSIVE")),
        FilePlan(mirror, (), "animated.gif", Picture("photo:rocket", "RGB", "GIF_ANIMATED")),
        FilePlan(mirror, (), "animated.png", Picture("photo:cat", "RGBA", "PNG_ANIMATED")),
        FilePlan(mirror, (), "float.tiff", Picture("photo:moon", "F", "TIFF")),
        FilePlan(mirror, (), "int32.tiff", Picture("photo:coins", "I", "TIFF")),
        FilePlan(mirror, (), "bilevel.pbm", Picture("photo:page", "1", "PPM")),
        *(FilePlan(mirror, (), name, Junk(kind)) for kind, name in sorted(JUNK.items())),
        FilePlan(mirror, (), "symlink.jpg", Link("symlink", 0)),  # to another class's picture
        FilePlan(mirror, (), "hardlink.png", Link("hardlink", 1)),
        FilePlan(mirror, ("sub",), "outside.jpg", Link("outside", 2)),
        FilePlan(mirror, (), "broken.jpg", Link("broken")),
        FilePlan(mirror, (), "pipe.png", Link("fifo")),
    ]
    return DatasetPlan((roses, dash, long_name, chinese, mirror, "empty"), tuple(files), 10, 10,
                       ("distortions", "fine_tuning", "json", "keep_duplicates", "saved_model",
                        "tflite_float16", "tflite_int8"))


SHAPES = {"every_shape": _every_shape()}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_every_shape_of_the_issue(name, picture_pool, tmp_path):
    assert check_pipeline(SHAPES[name], picture_pool, tmp_path, "tiny_test") == EXIT_OK


# Every failing example Hypothesis found, kept as it was drawn (see the table in CHANGELOG.md).
REGRESSIONS: dict[str, DatasetPlan] = {
    # One picture's bytes in two classes: both in one batch, the cache linked its pack twice
    # under one entry name and left the spare link (a .tmp file) behind.
    "byte_copy_across_classes": DatasetPlan(
        ("roses", "0"),
        (FilePlan("roses", (), "photo.BMP", Picture("photo:astronaut", "RGB", "BMP")),
         FilePlan("0", (), "photo.BMP", Copy(0))),
        10, 10, ()),
    # A class folder named with a newline: the one-class error quoted it and took two lines.
    "newline_in_the_only_class_name": DatasetPlan(
        ("report_html", "new\nline", "ünï"),
        (FilePlan("new\nline", (), "^\x9bç\x1d\U000afb21D.jpg",
                  Picture("photo:camera", "CMYK", "JPEG")),
         FilePlan("new\nline", (), "$HOME.bmp", Picture("photo:chelsea", "P", "BMP")),
         FilePlan("new\nline", (), "new\nline.jpg", Copy(1, "jpeg70"))),
        10, 10, ()),
    # The only class named with U+0085 (NEL), which str.splitlines() breaks lines at: the error
    # took two lines (C1 controls and U+2028/9 were not escaped).
    "next_line_character_in_the_only_class_name": DatasetPlan(
        ("Kî]º£I\x85\x7fÜ·",),
        (FilePlan("Kî]º£I\x85\x7fÜ·", (), "--help.png", Picture("fashion:3", "LA", "PNG")),
         FilePlan("Kî]º£I\x85\x7fÜ·", ("sub",), "new\nline.tiff",
                  Picture("fashion:3", "RGB", "TIFF"))),
        10, 10, ()),
    # One float16 TFLite file: written at the path given (the check looked for a suffixed name).
    "one_tflite_file_gets_the_path_given": DatasetPlan(
        ("Ô", "roses", "\U000e8d19"),
        (FilePlan("Ô", (), "émoji 🌹.jpg", Picture("huge", "CMYK", "JPEG")),
         FilePlan("Ô", (), "new\nline.jpg", Copy(0)),
         FilePlan("Ô", ("a b", "ü ü"), "`íÂ.png", Picture("fashion:9", "LA", "PNG")),
         FilePlan("roses", ("a b", "ü ü"), "100%.TIFF", Picture("fashion:9", "RGBA", "TIFF")),
         FilePlan("roses", (), "émoji 🌹.png", Picture("fashion:11", "RGBA", "PNG")),
         FilePlan("roses", ("a b", "ü ü"), "émoji 🌹.GIF", Picture("fashion:2", "P", "GIF")),
         FilePlan("\U000e8d19", (), "[t.png", Copy(4, "crop90"))),
        10, 10, ("export_drop", "json", "keep_duplicates", "tflite_float16")),
    # A class folder named "\x1e" (a separator Python counts as space): its label was empty, a
    # blank line in the labels file (shortened from the draw: 13 pictures in "\x1e").
    "class_named_with_a_separator_only": DatasetPlan(
        ("\x1e", "roses"),
        tuple(FilePlan(folder, (), f"{index}.png", Picture(source, "RGB", "PNG"))
              for folder, source in (("\x1e", "photo:astronaut"), ("roses", "photo:coffee"))
              for index in range(5)),
        10, 10, ()),
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_regression(name, picture_pool, tmp_path):
    check_pipeline(REGRESSIONS[name], picture_pool, tmp_path, "tiny_test")

