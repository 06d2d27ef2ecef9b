"""`label-image` on every artifact kind `retrain` writes: frozen graph, .tflite (float and int8),
SavedModel folder. Same output, --json, --top_k and exit codes whatever the kind."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from retrainer.cli.label_image import main as label_image_main
from tests.fixtures_label_image import write_solid_images

REPO = Path(__file__).resolve().parents[1]
KINDS = ("graph", "none", "dynamic", "float16", "int8", "saved_model")


def artifact(run, kind):
    return {"graph": run.graph, "saved_model": run.saved_model}.get(kind) or run.tflite[kind]


@pytest.fixture(scope="module")
def solid(tmp_path_factory):
    return write_solid_images(tmp_path_factory.mktemp("solid"))


def label_image(*args: str):
    return CliRunner().invoke(label_image_main, list(args))


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_classifies_with_the_same_output(deployed_run, solid, kind):
    paths = [str(solid[label]) for label in ("red", "green", "blue")]
    result = label_image("--graph", str(artifact(deployed_run, kind)), "--json", "--top_k", "2",
                         *paths)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["label"] for row in rows] == ["red", "green", "blue"]
    assert all(len(row["predictions"]) == 2 for row in rows)
    text = label_image("--graph", str(artifact(deployed_run, kind)), "--top_k", "1", paths[0])
    assert text.exit_code == 0 and text.stdout.startswith("red 0.")


def test_tflite_is_told_by_content_and_carries_its_labels(deployed_run, solid, tmp_path):
    alone = tmp_path / "renamed.pb"  # no sidecar, no labels file, misleading name
    shutil.copy(deployed_run.tflite["int8"], alone)
    result = label_image("--graph", str(alone), "--quiet", str(solid["green"]))
    assert result.exit_code == 0, result.output
    assert result.stdout.split("\t")[0] == "green"


def test_truncated_tflite_exits_4_with_one_line(deployed_run, solid, tmp_path):
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(deployed_run.tflite["none"].read_bytes()[:2000])
    result = label_image("--graph", str(broken), str(solid["red"]))
    assert result.exit_code == 4
    assert result.stderr.startswith(f"Error: cannot load TFLite model {broken}: truncated or corrupt")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_tflite_input_size_is_fixed(deployed_run, solid):
    result = label_image("--graph", str(deployed_run.tflite["float16"]), "--input_height", "64",
                         str(solid["red"]))
    assert result.exit_code == 2
    assert "takes 32x32 images" in result.stderr and "--image_size 64" in result.stderr


def test_folder_without_saved_model_is_refused(tmp_path, solid):
    result = label_image("--graph", str(tmp_path), str(solid["red"]))
    assert result.exit_code == 2 and "saved_model.pb" in result.stderr


def test_tensorflow_label_image_example_agrees(deployed_run, solid):
    """TF's own TFLite label_image.py preprocessing (--input_mean 0 --input_std 255) gives
    label-image's top-1 on the float and int8 files (scripts/check_tflite_label_image_example.py)."""
    spec = importlib.util.spec_from_file_location(
        "check_tflite_label_image_example", REPO / "scripts" / "check_tflite_label_image_example.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    for mode in ("none", "int8"):
        assert check.compare(deployed_run.tflite[mode], list(solid.values())) == []
