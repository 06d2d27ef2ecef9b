"""The demo-data builder (examples/fashion_mnist.py) and the idx fetch script."""

from __future__ import annotations

import shutil
import subprocess
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.fixtures_data import REPO_ROOT, fashion_mnist_idx_dir, fashion_mnist_module

fashion_mnist = fashion_mnist_module()


def folder_listing(root):
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*"))


def test_builds_the_same_class_folders_every_time(tmp_path):
    first = fashion_mnist.write_image_folder(fashion_mnist_idx_dir(), tmp_path / "a", per_class=3)
    second = fashion_mnist.write_image_folder(fashion_mnist_idx_dir(), tmp_path / "b", per_class=3)
    assert sorted(path.name for path in first.iterdir() if path.is_dir()) == sorted(
        fashion_mnist.CLASS_NAMES
    )
    assert folder_listing(first) == folder_listing(second)
    for path in first.rglob("*.png"):
        assert path.read_bytes() == (second / path.relative_to(first)).read_bytes()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a", "b"]  # no staging left


def test_images_are_the_first_of_each_class_in_file_order(tmp_path):
    out = fashion_mnist.write_image_folder(
        fashion_mnist_idx_dir(), tmp_path / "t", per_class=2, subset="t10k", size=56,
        image_format="jpg",
    )
    labels = fashion_mnist.read_labels(fashion_mnist_idx_dir() / "t10k-labels-idx1-ubyte.gz")
    for class_index, name in enumerate(fashion_mnist.CLASS_NAMES):
        expected = [f"t10k_{index:05d}.jpg" for index in np.flatnonzero(labels == class_index)[:2]]
        assert sorted(path.name for path in (out / name).iterdir()) == expected
        assert Image.open(out / name / expected[0]).size == (56, 56)


def test_rerun_is_a_no_op_and_other_settings_rebuild(tmp_path):
    out = fashion_mnist.write_image_folder(fashion_mnist_idx_dir(), tmp_path / "d", per_class=2)
    marker = out / fashion_mnist.MARKER
    stamp = marker.stat().st_mtime_ns
    time.sleep(0.01)
    fashion_mnist.write_image_folder(fashion_mnist_idx_dir(), out, per_class=2)
    assert marker.stat().st_mtime_ns == stamp
    fashion_mnist.write_image_folder(fashion_mnist_idx_dir(), out, per_class=4)
    assert len(list((out / "Bag").iterdir())) == 4


def test_never_overwrites_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="was not made by this script"):
        fashion_mnist.write_image_folder(fashion_mnist_idx_dir(), tmp_path, per_class=1)
    assert folder_listing(tmp_path) == ["mine.txt"]


def test_cli_writes_the_folder_and_reports_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(fashion_mnist.main, [
        "--idx-dir", str(fashion_mnist_idx_dir()), "--out", str(tmp_path / "out"),
        "--per-class", "1", "--subset", "t10k",
    ])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(tmp_path / "out")
    assert len(list((tmp_path / "out").glob("*/*.png"))) == 10

    result = runner.invoke(fashion_mnist.main, [
        "--idx-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "other"),
    ])
    assert result.exit_code == 1
    assert "train-images-idx3-ubyte.gz is missing; run: bash scripts/fetch_fashion_mnist.sh" in (
        result.output
    )


def test_fetch_script_does_nothing_when_the_files_are_there(tmp_path):
    dest = tmp_path / "fm"
    shutil.copytree(fashion_mnist_idx_dir(), dest)
    before = {path.name: path.stat().st_mtime_ns for path in dest.iterdir()}
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "fetch_fashion_mnist.sh"), str(dest)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == result.stderr == ""
    assert {path.name: path.stat().st_mtime_ns for path in dest.iterdir()} == before
