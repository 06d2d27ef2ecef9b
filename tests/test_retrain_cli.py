"""`retrain` end to end: flags, outputs, summary, --json/--quiet, errors and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from retrainer.cache.layout import MIRRORED_SUBFOLDER
from retrainer.cli import PathOrUrl
from retrainer.cli.retrain import main
from retrainer.config import DEFAULT_EXTRACTOR, PATH_FLAGS, RetrainConfig, default_bottleneck_dir
from retrainer.data.split import TRAINING, assign_split
from retrainer.errors import EXIT_DATA, EXIT_INTERRUPTED, EXIT_USAGE
from retrainer.pipeline import _flags_without_paths
from tests.fixtures_data import make_color_image_dir
from tests.fixtures_pipeline import interrupt_cache_writes_after, retrain_args

REPO_ROOT = Path(__file__).resolve().parents[1]

# retrain.py's flags and defaults; paths moved from fixed /tmp names to ./retrain_output (see docs).
RETRAIN_PY_DEFAULTS = {
    "testing_percentage": 10,
    "validation_percentage": 10,
    "eval_step_interval": 10,
    "train_batch_size": 100,
    "test_batch_size": -1,
    "validation_batch_size": 100,
    "print_misclassified_test_images": False,
    "final_tensor_name": "final_result",
    "intermediate_store_frequency": 0,
    "logging_verbosity": "INFO",
    "output_graph": Path("retrain_output/output_graph.pb"),
    "output_labels": Path("retrain_output/output_labels.txt"),
    "summaries_dir": Path("retrain_output/retrain_logs"),
    "intermediate_output_graphs_dir": Path("retrain_output/intermediate_graphs"),
    "checkpoint_path": Path("retrain_output/checkpoint/retrain_checkpoint"),
    "tfhub_module": "efficientnet_lite0",
}


def invoke(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def run_json(args: list[str]) -> dict:
    result = invoke([*args, "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def colors(tmp_path) -> Path:
    return make_color_image_dir(tmp_path / "colors", per_class=10)


def test_flags_keep_retrain_py_names_defaults_and_dash_spellings():
    options = {param.name: param for param in main.params}
    for name, default in RETRAIN_PY_DEFAULTS.items():
        option = options[name]
        assert option.default == default, name
        assert f"--{name}" in option.opts and f"--{name.replace('_', '-')}" in option.opts
    assert options["image_dir"].required and "--image-dir" in options["image_dir"].opts
    assert options["bottleneck_dir"].default() == default_bottleneck_dir()
    assert options["seed"].default == 0
    # retrain.py's SGD settings: unset by default (the lbfgs solver), 4000 / 0.01 for SGD
    for name in ("how_many_training_steps", "learning_rate"):
        assert options[name].default is None and f"--{name.replace('_', '-')}" in options[name].opts
    training = RetrainConfig(image_dir="x").training
    assert (training.solver, training.training_steps(1000), training.sgd_learning_rate) == (
        "lbfgs", 4000, 0.01)
    for sgd_flags in ({"how_many_training_steps": 4000}, {"learning_rate": 0.01}):
        assert RetrainConfig(image_dir="x", **sgd_flags).training.solver == "sgd"
    assert RetrainConfig(image_dir="x", head_solver="sgd").training.solver == "sgd"
    assert RetrainConfig(image_dir="x", head_solver="lbfgs",
                         learning_rate=0.1).training.solver == "lbfgs"
    help_text = " ".join(invoke(["--help"]).stdout.split())  # unwrapped
    assert "[default: (4000); x>=1]" in help_text and "retrain_output/output_graph.pb" in help_text
    assert "${XDG_CACHE_HOME:-~/.cache}" in help_text


def test_default_extractor_matches_the_registry():
    from retrainer.extractors import list_extractors

    assert DEFAULT_EXTRACTOR in list_extractors()


def test_help_is_instant_without_tensorflow():
    code = "import sys, retrainer.cli.retrain; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT).returncode == 0
    result = subprocess.run([sys.executable, "-m", "retrainer.cli.retrain", "--help"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--image_dir" in result.stdout


def test_end_to_end_outputs_summary_and_cache_reuse(tmp_path, fashion_subset_dir):
    args = retrain_args(tmp_path, fashion_subset_dir, "--intermediate_store_frequency", "20",
                        "--saved_model_dir", str(tmp_path / "out" / "saved_model"))
    result = invoke(args)
    assert result.exit_code == 0, result.stderr
    out = tmp_path / "out"
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Final test accuracy = ") and lines[0].endswith(")")
    assert any(line.split()[:4] == ["bag", "20", "2", "3"] or line.startswith("  bag") for line in lines)
    assert "Step 39: Train accuracy = " in result.stderr and "Step 0: Cross entropy" in result.stderr
    assert "Step 39" not in result.stdout
    assert (out / "labels.txt").read_text() == "bag\ndress\nsneaker\ntrouser\n"
    metadata = json.loads((out / "graph.pb.meta.json").read_text())
    assert metadata["labels"] == ["bag", "dress", "sneaker", "trouser"]
    for path in ["graph.pb", "checkpoint/head.index", "intermediate/intermediate_20.pb",
                 "intermediate/intermediate_20.pb.meta.json", "saved_model/saved_model.pb"]:
        assert (out / path).is_file(), path
    assert list((out / "logs" / "train").glob("events.out.tfevents.*"))

    rerun = run_json(args)
    assert (rerun["bottlenecks_computed"], rerun["bottlenecks_reused"]) == (0, 100)
    assert sum(sum(row.values()) for row in rerun["counts"].values()) == 100
    assert rerun["outputs"]["intermediate_graphs"] == [str(out / "intermediate" / "intermediate_20.pb")]
    parts = {"discover", "file index", "import", "extractor", "bottlenecks", "audit", "train",
             "evaluate", "novelty", "tta", "export", "reports", "exit", "other"}
    assert set(rerun["seconds"]) == parts | {"total"}  # in process: no "start-up"
    assert sum(rerun["seconds"][part] for part in parts) == pytest.approx(
        rerun["seconds"]["total"], abs=1e-6)
    assert set(rerun["peak_memory_gib"]) == parts | {"total"}
    assert 0 < rerun["peak_memory_gib"]["bottlenecks"] <= rerun["peak_memory_gib"]["total"]


def test_same_seed_same_results_with_either_flag_spelling(tmp_path, colors):
    first = run_json(retrain_args(tmp_path / "a", colors, "--seed", "7"))
    dashed = [argument.replace("_", "-") if argument.startswith("--") else argument
              for argument in retrain_args(tmp_path / "b", colors, "--seed", "7")]
    second = run_json(dashed)
    other = run_json(retrain_args(tmp_path / "c", colors, "--seed", "8"))
    keys = ("train_accuracy", "cross_entropy", "validation_accuracy", "test_accuracy")
    assert [first[key] for key in keys] == [second[key] for key in keys]
    assert (tmp_path / "a/out/graph.pb").read_bytes() == (tmp_path / "b/out/graph.pb").read_bytes()
    assert first["cross_entropy"] != other["cross_entropy"]


def test_json_is_one_object_on_stdout_and_logs_stay_on_stderr(tmp_path, colors):
    result = invoke([*retrain_args(tmp_path, colors), "--json"])
    document = json.loads(result.stdout)
    assert result.stdout.count("\n") == 1
    assert "INFO: Step 0: Train accuracy" in result.stderr
    assert document["labels"] == ["blue", "green", "red"]
    assert document["outputs"]["output_graph"] == str(tmp_path / "out" / "graph.pb")
    assert 0 <= document["test_accuracy"] <= 1


def test_quiet_prints_only_the_result(tmp_path, colors):
    result = invoke([*retrain_args(tmp_path, colors), "--quiet"])
    assert result.exit_code == 0
    assert result.stdout.startswith("Final test accuracy = ") and result.stdout.count("\n") == 1
    assert "INFO" not in result.stderr and "Step" not in result.stderr


def test_misclassified_test_images_are_listed(tmp_path, colors):
    document = run_json(retrain_args(tmp_path, colors, "--learning_rate", "0.0001", "--seed", "3"))
    result = invoke(retrain_args(tmp_path, colors, "--learning_rate", "0.0001", "--seed", "3",
                                 "--print_misclassified_test_images"))
    assert "=== MISCLASSIFIED TEST IMAGES ===" in result.stdout
    assert document["misclassified"], "the barely trained head should get some wrong"
    for wrong in document["misclassified"]:
        assert f"{wrong['path']:>70}  {wrong['predicted']}" in result.stdout.splitlines()


def test_no_validation_or_test_images(tmp_path, colors):
    result = invoke(retrain_args(tmp_path, colors, "--validation_percentage", "0",
                                 "--testing_percentage", "0"))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("Final test accuracy = n/a (no test images)")
    assert "No validation images" in result.stderr and "No test images" in result.stderr


def test_a_class_with_no_validation_or_test_images(tmp_path, colors):
    """retrain.py crashed (ZeroDivisionError) when a class had no validation images."""
    few = colors / "yellow"
    few.mkdir()
    names = (f"y{index}.png" for index in range(1000))
    kept = [name for name in names if assign_split(f"yellow/{name}", 10, 10) == TRAINING][:3]
    for name in kept:
        Image.new("RGB", (32, 32), (255, 255, 0)).save(few / name)
    document = run_json(retrain_args(tmp_path, colors))
    assert document["counts"]["yellow"] == {"training": 3, "validation": 0, "testing": 0}
    assert document["test_per_class"]["yellow"] == {"correct": 0, "total": 0}


def test_undecodable_images_are_skipped_and_reported(tmp_path, colors):
    (colors / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (colors / "red" / "notes.txt").write_text("not an image")
    result = invoke(retrain_args(tmp_path, colors))
    assert result.exit_code == 0
    assert "Skipped 2 files:" in result.stdout and "red/broken.png: " in result.stdout
    assert str(colors / "red" / "broken.png") in result.stderr
    document = run_json(retrain_args(tmp_path, colors))
    assert {entry["path"] for entry in document["skipped"]} == {"red/broken.png", "red/notes.txt"}
    assert sum(document["counts"]["red"].values()) == 10


def test_interrupted_run_exits_130_and_the_rerun_resumes(tmp_path, colors, monkeypatch):
    interrupt_cache_writes_after(monkeypatch, 12)
    result = invoke(retrain_args(tmp_path, colors))
    assert result.exit_code == EXIT_INTERRUPTED
    assert "Interrupted" in result.stderr
    monkeypatch.undo()
    kept = len(list((tmp_path / "bottlenecks").rglob("*.npy")))
    assert 12 <= kept < 30
    document = run_json(retrain_args(tmp_path, colors))
    assert (document["bottlenecks_computed"], document["bottlenecks_reused"]) == (30 - kept, kept)


def test_ctrl_c_that_a_library_turns_into_another_error_still_exits_130(capsys):
    """TensorFlow's tracing context asserts "Concurrent access?" when Ctrl-C lands inside it."""
    import contextlib

    from retrainer.cli import reports_errors

    @contextlib.contextmanager
    def strict_stack():
        yield
        raise AssertionError("Concurrent access?")  # what tf_stack's __exit__ raises then

    @reports_errors
    def command():
        with strict_stack():
            raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stopped:
        command()
    assert stopped.value.code == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "Interrupted; work done so far is kept (rerun to resume).\n"

    @reports_errors
    def failing():
        raise AssertionError("a bug")

    with pytest.raises(AssertionError):  # a real bug still shows its traceback
        failing()


def test_default_paths(isolated_home, colors, tmp_path):
    result = invoke(["--image_dir", str(colors), "--tfhub_module", "tiny_test",
                     "--how_many_training_steps", "5"])
    assert result.exit_code == 0, result.stderr
    for path in ["output_graph.pb", "output_graph.pb.meta.json", "output_labels.txt",
                 "checkpoint/retrain_checkpoint.index"]:
        assert (isolated_home / "retrain_output" / path).is_file(), path
    assert (isolated_home / "retrain_output" / "retrain_logs" / "train").is_dir()
    folder = tmp_path / "xdg_cache/retrainer/bottlenecks/tiny_test-v1"
    plain = [path for path in folder.rglob("*.npy")  # not --tta auto's mirrored images
             if MIRRORED_SUBFOLDER not in path.relative_to(folder).parts]
    assert len(plain) == 30


def test_default_bottleneck_dir_without_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_bottleneck_dir() == tmp_path / ".cache" / "retrainer" / "bottlenecks"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--learning_rate", "0"], "--learning_rate must be a positive number. Received: 0.0."),
        (["--train_batch_size", "0"], "--train_batch_size must be at least 1, or -1 for the whole"),
        (["--validation_percentage", "60", "--testing_percentage", "50"], "at most 100"),
        (["--final_tensor_name", "bad name"], "--final_tensor_name must be a TensorFlow op name"),
        (["--tfhub_module", "no_such_model"], "unknown feature extractor 'no_such_model'"),
    ],
)
def test_bad_flag_values_exit_2_with_a_message(tmp_path, colors, extra, message):
    result = invoke(retrain_args(tmp_path, colors, *extra))
    assert result.exit_code == EXIT_USAGE
    assert result.stderr.splitlines()[-1].startswith("Error: ") and message in result.stderr


def test_missing_image_dir(tmp_path):
    result = invoke([])
    assert result.exit_code == EXIT_USAGE and "Missing option '--image_dir'" in result.stderr
    result = invoke(retrain_args(tmp_path, tmp_path / "nowhere"))
    assert result.exit_code == EXIT_USAGE and str(tmp_path / "nowhere") in result.stderr


def test_unwritable_outputs_fail_before_any_work(tmp_path, colors):
    (tmp_path / "a_file").write_text("")
    result = invoke(retrain_args(tmp_path, colors, "--summaries_dir", str(tmp_path / "a_file" / "logs")))
    assert result.exit_code == EXIT_USAGE
    assert f"cannot write to {tmp_path / 'a_file' / 'logs'} (for --summaries_dir)" in result.stderr
    assert not list((tmp_path / "bottlenecks").rglob("*.npy"))

    (tmp_path / "graph_dir").mkdir()
    result = invoke(retrain_args(tmp_path, colors, "--output_graph", str(tmp_path / "graph_dir")))
    assert result.exit_code == EXIT_USAGE and "--output_graph" in result.stderr


def test_never_replaces_a_folder_that_is_not_a_saved_model(tmp_path, colors):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    result = invoke(retrain_args(tmp_path, colors, "--saved_model_dir", str(precious)))
    assert result.exit_code == EXIT_USAGE and "is not a SavedModel" in result.stderr
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_data_errors_exit_3(tmp_path):
    one_class = make_color_image_dir(tmp_path / "one", {"red": (255, 0, 0)}, per_class=3)
    result = invoke(retrain_args(tmp_path, one_class))
    assert result.exit_code == EXIT_DATA and "At least 2 classes" in result.stderr

    broken = tmp_path / "broken"
    for name in ("a", "b"):
        (broken / name).mkdir(parents=True)
        (broken / name / "x.jpg").write_bytes(b"not a jpeg")
    result = invoke(retrain_args(tmp_path, broken))
    assert result.exit_code == EXIT_DATA and "No decodable training images" in result.stderr


def test_real_extractor_end_to_end_in_a_real_process(tmp_path, fashion_subset_dir,
                                                     fashion_mnist_holdout_dir):
    """efficientnet_lite0 on real Fashion-MNIST: accuracy far above chance (25%), and the graph
    classifies held-out images the way TensorFlow's label_image.py would run it. The process
    leaves nothing in the temporary folder (TensorFlow's autograph writes its converted functions
    there and removes them at exit: the fast exit must still run those clean-ups)."""
    args = retrain_args(tmp_path, fashion_subset_dir, "--testing_percentage", "30", "--json",
                        extractor="efficientnet_lite0", steps=300)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2",
           "TMPDIR": str(temporary)}
    process = subprocess.run([sys.executable, "-m", "retrainer.cli.retrain", *args], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr
    assert sorted(path.name for path in temporary.iterdir()) == []
    document = json.loads(process.stdout)
    assert document["test_count"] >= 20
    assert document["test_accuracy"] >= 0.8

    from tests.test_export import label_image_py

    names = {"Trouser": "trouser", "Bag": "bag", "Sneaker": "sneaker", "Dress": "dress"}
    labels = (tmp_path / "out" / "labels.txt").read_text().splitlines()
    correct = total = 0
    for folder, label in names.items():
        for image in sorted((fashion_mnist_holdout_dir / folder).iterdir()):
            _, probabilities = label_image_py(tmp_path / "out" / "graph.pb", image, 224, 224)
            correct += labels[int(np.argmax(probabilities))] == label
            total += 1
    assert correct >= total - 2


def test_every_path_flag_is_a_path_flag_of_the_config():
    """PATH_FLAGS (derived from the config's annotations) are exactly the CLI's path options plus
    --image_dir (kept as typed), so a new path flag is left out of the machine's "same flags"
    record without anyone listing it."""
    cli_paths = {param.name for param in main.params if isinstance(param.type, PathOrUrl)}
    assert set(PATH_FLAGS) == cli_paths | {"image_dir"}
    assert len(PATH_FLAGS) == len(set(PATH_FLAGS))


@settings(max_examples=20, deadline=None)
@given(folders=st.lists(st.text("abcxyz-_", min_size=1, max_size=6), min_size=2, max_size=2,
                        unique=True))
def test_runs_into_other_folders_have_the_same_flags_but_paths(folders):
    """Every path flag moved to another folder: the same flags on this machine; an optional
    output asked for or not, or any other flag changed: other flags."""
    def config(folder: str, **changes) -> RetrainConfig:
        paths = {name: f"/{folder}/{name}" for name in PATH_FLAGS}
        return RetrainConfig(**{**paths, **changes})

    first, second = (config(folder) for folder in folders)
    assert _flags_without_paths(first) == _flags_without_paths(second)
    assert _flags_without_paths(config(folders[0], saved_model_dir=None)) \
        != _flags_without_paths(first)
    assert _flags_without_paths(config(folders[0], seed=1)) != _flags_without_paths(first)
