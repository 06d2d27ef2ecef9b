"""make_image_classifier's command line runs unchanged; its flags without a meaning here stop with
one line naming retrainer's equivalent (docs/migrating.md)."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from retrainer.cli.retrain import main as retrain
from retrainer.config import UNSUPPORTED_FLAGS
from retrainer.errors import EXIT_USAGE
from tests.fixtures_data import fashion_mnist_idx_dir, fashion_mnist_module


def test_a_make_image_classifier_command_line_runs_unchanged(tmp_path, monkeypatch):
    images = fashion_mnist_module().write_image_folder(fashion_mnist_idx_dir(),
                                                       tmp_path / "flowers", per_class=30)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    outcome = CliRunner().invoke(retrain, [
        "--image_dir", str(images), "--tfhub_module", "efficientnet_lite0", "--image_size", "224",
        "--saved_model_dir", "out/saved_model", "--labels_output_file", "out/labels.txt",
        "--train_epochs", "2", "--batch_size", "32", "--validation_split", "0.2", "--json"])

    assert outcome.exit_code == 0, outcome.output
    result = json.loads(outcome.stdout)
    training_images = sum(counts["training"] for counts in result["counts"].values())
    assert result["head"]["solver"] == "sgd"
    assert result["history"][-1]["step"] + 1 == 2 * math.ceil(training_images / 32)
    assert result["flags"]["validation_percentage"] == 20.0
    assert result["flags"]["train_batch_size"] == 32
    validation = sum(counts["validation"] for counts in result["counts"].values())
    assert 0.1 < validation / 300 < 0.3  # a hash split: about 20 %
    assert (tmp_path / "out" / "labels.txt").read_text().split("\n")[:2] == ["ankle boot", "bag"]
    assert (tmp_path / "out" / "saved_model" / "saved_model.pb").is_file()
    assert result["outputs"]["output_labels"] == "out/labels.txt"


@pytest.mark.parametrize("flag", sorted(UNSUPPORTED_FLAGS))
@pytest.mark.parametrize("form", ["bare", "value"])
def test_flags_without_a_meaning_here_name_the_equivalent(flag, form, tmp_path):
    given = [f"--{flag}"] if form == "bare" else [f"--{flag}=0.5"]
    outcome = CliRunner().invoke(retrain, ["--image_dir", str(tmp_path), *given])
    lines = outcome.stderr.strip().splitlines()
    assert outcome.exit_code == EXIT_USAGE and len(lines) == 1, outcome.stderr
    assert lines[0].startswith(f"Error: --{flag} is a make_image_classifier flag")
    assert "--" in lines[0].split(";", 1)[1] or "TF_FORCE_GPU_ALLOW_GROWTH" in lines[0] \
        or "decoder" in lines[0]
    assert not (tmp_path / "retrain_output").exists()


def test_conflicting_spellings_are_refused(tmp_path):
    outcome = CliRunner().invoke(retrain, ["--image_dir", str(tmp_path), "--validation_split",
                                           "0.3", "--validation_percentage", "25"])
    assert outcome.exit_code == EXIT_USAGE
    assert "pass one of them" in outcome.stderr
    outcome = CliRunner().invoke(retrain, ["--image_dir", str(tmp_path), "--train_epochs", "2",
                                           "--how_many_training_steps", "100"])
    assert outcome.exit_code == EXIT_USAGE
    assert "--train_epochs must be left out" in outcome.stderr
