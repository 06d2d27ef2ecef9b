"""The test split never influences any choice: relabel only test images, get the same model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf
from click.testing import CliRunner

from retrainer.cli.retrain import main
from retrainer.data.split import TESTING, assign_split
from tests.fixtures_data import make_color_image_dir
from tests.fixtures_pipeline import retrain_args

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 40, 220),
          "yellow": (230, 220, 40)}


def graph_constants(graph: Path) -> list[np.ndarray]:
    graph_def = tf.compat.v1.GraphDef.FromString(graph.read_bytes())
    return [tf.make_ndarray(node.attr["value"].tensor) for node in graph_def.node
            if node.op == "Const"]


def relabel_test_images(root: Path) -> int:
    """Move every test image into the next class's folder, under a name that keeps it in the
    test split (the split hashes the path); returns how many moved."""
    classes = sorted(path.name for path in root.iterdir())
    moved = 0
    for path in sorted(root.rglob("*.png")):
        if assign_split(f"{path.parent.name}/{path.name}", 10, 10) != TESTING:
            continue
        target_class = classes[(classes.index(path.parent.name) + 1) % len(classes)]
        name = next(f"moved{index}_{path.name}" for index in range(10_000)
                    if assign_split(f"{target_class}/moved{index}_{path.name}", 10, 10) == TESTING)
        shutil.move(path, root / target_class / name)
        moved += 1
    return moved


def test_relabelling_only_test_images_gives_the_same_model(tmp_path):
    images = make_color_image_dir(tmp_path / "images", COLORS, per_class=30)
    runs = []
    for name in ("before", "after"):
        if name == "after":
            assert relabel_test_images(images) >= 4
        work = tmp_path / name
        # One cache: the moved files keep their content, so they keep their vectors.
        result = CliRunner().invoke(main, retrain_args(
            work, images, "--json", "--bottleneck_dir", str(tmp_path / "cache"), steps=None))
        assert result.exit_code == 0, result.output
        runs.append((json.loads(result.stdout), graph_constants(work / "out" / "graph.pb")))
    (before, constants_before), (after, constants_after) = runs
    assert before["head"]["solver"] == "lbfgs"
    assert before["head"]["l2"] == after["head"]["l2"]
    assert len(constants_before) == len(constants_after)
    for first, second in zip(constants_before, constants_after):
        np.testing.assert_array_equal(first, second)
    # ...while the test figures did see the new labels
    assert before["test_accuracy"] == 1.0 and after["test_accuracy"] < 0.5


def test_search_table_and_choice_ignore_the_test_split(tmp_path, monkeypatch):
    """--search with the tiny extractor: plain and distorted candidates, chosen on validation;
    relabelling test images changes neither the table nor the model."""
    from retrainer.pipeline import search

    monkeypatch.setattr(search, "BUILT_IN_EXTRACTORS", ())
    images = make_color_image_dir(tmp_path / "images", COLORS, per_class=30)
    documents = []
    for name in ("before", "after"):
        if name == "after":
            relabel_test_images(images)
        work = tmp_path / name
        result = CliRunner().invoke(main, retrain_args(
            work, images, "--json", "--search", "--search_modules", "tiny_test",
            "--bottleneck_dir", str(tmp_path / "cache"), steps=None))
        assert result.exit_code == 0, result.output
        documents.append(json.loads(result.stdout))
    before, after = documents
    names = [row["name"] for row in before["search"]["candidates"]]
    assert names == ["tiny_test", "tiny_test + distortions"]
    assert all(row["status"] == "ok" and row["validation_accuracy"] is not None
               for row in before["search"]["candidates"])
    strip = [{key: value for key, value in row.items() if key != "seconds"}
             for row in before["search"]["candidates"]]
    assert strip == [{key: value for key, value in row.items() if key != "seconds"}
                     for row in after["search"]["candidates"]]
    assert before["search"]["chosen"] == after["search"]["chosen"]
    assert before["distorted"] is not None or before["search"]["chosen"] == "tiny_test"


def test_search_budget_skips_later_candidates(tmp_path, monkeypatch):
    from retrainer.pipeline import search

    monkeypatch.setattr(search, "BUILT_IN_EXTRACTORS", ())
    images = make_color_image_dir(tmp_path / "images", COLORS, per_class=12)
    result = CliRunner().invoke(main, retrain_args(
        tmp_path, images, "--json", "--search", "--search_modules", "tiny_test",
        "--search_budget", "0.000001", steps=None))
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["search"]["candidates"]
    assert rows[0]["status"] == "ok" and rows[1]["status"] == "skipped (budget)"
