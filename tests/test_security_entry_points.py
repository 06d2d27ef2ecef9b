"""Every way a model file enters retrainer refuses the issue's hostile files, and runs them trusted.

For each entry point -- `label-image` on a .pb and on a SavedModel, `retrain --tfhub_module`,
`retrain-extract --tfhub_module`, `retrainer.load` -- a hostile file gives exit 4, one `Error:`
line on stderr, and no file written (neither the model's target nor any output); the same command
with `--trust_model` runs it (and the model's write happens: the attack is real).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from retrainer.cli.label_image import main as label_image
from retrainer.cli.retrain import main as retrain
from retrainer.errors import EXIT_MODEL
from tests.fixtures_data import make_color_image_dir
from tests.fixtures_pipeline import retrain_args
from tests.fixtures_security import (
    TWO_LABELS,
    hostile_frozen_graph,
    hostile_saved_model,
    hostile_tf2_module,
)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A real photograph (scikit-image's astronaut), as a JPEG."""
    from skimage import data

    path = tmp_path_factory.mktemp("photo") / "astronaut.jpg"
    Image.fromarray(data.astronaut()).save(path, quality=90)
    return path


def assert_refused(stderr: str, exit_code: int, model_file: Path) -> None:
    """Exit 4 and exactly one line on stderr: `Error: model file <file> is refused ...`."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert exit_code == EXIT_MODEL, stderr
    assert len(lines) == 1 and lines[0].startswith(f"Error: model file {model_file} is refused"), \
        stderr
    assert "op WriteFile" in lines[0] or "op PrintV2" in lines[0]
    assert "--trust_model" in lines[0]


@pytest.mark.parametrize("style", ["write_file", "print_v2"])
def test_label_image_on_a_hostile_frozen_graph(style, photo, tmp_path):
    target = tmp_path / "written.txt"
    graph = hostile_frozen_graph(tmp_path / "model" / "model.pb", target, style)

    refused = CliRunner().invoke(label_image, ["--graph", str(graph), str(photo)])

    assert_refused(refused.stderr, refused.exit_code, graph)
    assert not target.exists()

    trusted = CliRunner().invoke(label_image, ["--graph", str(graph), "--trust_model", str(photo)])

    assert trusted.exit_code == 0, trusted.output
    assert [line.split()[0] for line in trusted.stdout.splitlines()] in (
        list(TWO_LABELS), list(reversed(TWO_LABELS)))
    assert target.exists()


def test_label_image_on_a_hostile_saved_model(photo, tmp_path):
    target = tmp_path / "written.txt"
    folder = hostile_saved_model(tmp_path / "saved_model", target)

    refused = CliRunner().invoke(label_image, ["--graph", str(folder), "--json", str(photo)])

    assert_refused(refused.stderr, refused.exit_code, folder / "saved_model.pb")
    assert refused.stdout == "" and not target.exists()

    trusted = CliRunner().invoke(label_image, ["--graph", str(folder), "--trust-model", "--json",
                                               str(photo)])

    assert trusted.exit_code == 0, trusted.output
    assert json.loads(trusted.stdout)["label"] in TWO_LABELS
    assert target.exists()


def test_retrain_with_a_hostile_module(tmp_path):
    target = tmp_path / "written.txt"
    module = hostile_tf2_module(tmp_path / "module", target)
    images = make_color_image_dir(tmp_path / "colors")
    args = retrain_args(tmp_path, images, "--quiet", extractor=str(module), steps=20)

    refused = CliRunner().invoke(retrain, args)

    assert_refused(refused.stderr, refused.exit_code, module / "saved_model.pb")
    assert not target.exists()
    assert not (tmp_path / "out").exists() and not (tmp_path / "bottlenecks").exists()

    trusted = CliRunner().invoke(retrain, [*args, "--trust_model"])

    assert trusted.exit_code == 0, trusted.output
    assert (tmp_path / "out" / "graph.pb").is_file() and target.exists()


@pytest.mark.beam
def test_retrain_extract_with_a_hostile_module(tmp_path):
    pytest.importorskip("apache_beam")
    target = tmp_path / "written.txt"
    module = hostile_tf2_module(tmp_path / "module", target)
    images = make_color_image_dir(tmp_path / "colors")
    cache = tmp_path / "bottlenecks"
    command = [sys.executable, "-m", "retrainer.cli.extract", "--image_dir", str(images),
               "--bottleneck_dir", str(cache), "--tfhub_module", str(module), "--quiet"]

    refused = subprocess.run(command, capture_output=True, text=True, timeout=240)

    assert_refused(refused.stderr, refused.returncode, module / "saved_model.pb")
    assert not target.exists() and not cache.exists()

    trusted = subprocess.run([*command, "--trust_model"], capture_output=True, text=True,
                             timeout=240)

    assert trusted.returncode == 0, trusted.stderr[-3000:]
    assert target.exists() and cache.is_dir()


@pytest.mark.beam
def test_retrain_extract_workers_check_the_module_themselves(tmp_path):
    """Each worker loads the module itself, so it checks it itself: the launcher's check does
    not travel with the task (the file a worker reads may not be the one the launcher read)."""
    pytest.importorskip("apache_beam")
    from retrainer.beam.transforms import Extraction, ExtractShards
    from retrainer.errors import UntrustedModelError

    target = tmp_path / "written.txt"
    module = hostile_tf2_module(tmp_path / "module", target)
    extraction = Extraction(str(module), None, "float32", False, (32, 32),
                            str(tmp_path / "cache"), str(tmp_path / "run"))

    with pytest.raises(UntrustedModelError, match=r"saved_model\.pb"):
        ExtractShards(extraction).setup()
    assert not target.exists()


def test_python_api_load_refuses_unless_trusted(photo, tmp_path):
    from retrainer import load
    from retrainer.errors import UntrustedModelError

    target = tmp_path / "written.txt"
    graph = hostile_frozen_graph(tmp_path / "model" / "model.pb", target)
    with pytest.raises(UntrustedModelError, match="op WriteFile"):
        load(graph)
    assert not target.exists()

    with load(graph, trust_model=True) as model:
        (prediction,) = model.predict([photo])
    assert prediction.label in TWO_LABELS
    assert target.exists()
