"""A cold run (a new --bottleneck_dir and new output folders) on a machine where the same flags
ran before imports no TensorFlow: the int8 extraction runs on LiteRT, the frozen graph and the
checkpoint are written from the user cache's templates, the heat maps come from the int8
engine's kept model; and it writes what a run with TensorFlow writes, heat maps included.

Real processes (`python -X importtime -m retrainer.cli.retrain`), the real default extractor and
real Fashion-MNIST images, as in tests/test_warm_rerun.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_warm_rerun import classified, retrain, stable

# What a cold run must compute as the first did (its paths and timings differ).
SAME = ("labels", "counts", "test_accuracy", "test_per_class", "head", "tta", "novelty",
        "extractor_id", "extractor_precision")


def written(folder: Path) -> dict[str, bytes]:
    return {name: (folder / "out" / name).read_bytes() for name in (
        "graph.pb", "graph.pb.meta.json", "labels.txt", "ckpt/head.index",
        "ckpt/head.data-00000-of-00001")}


def heat_map_figures(folder: Path) -> int:
    return (folder / "out" / "report.html").read_text().count('alt="heat map of ')


def gallery(folder: Path) -> str:
    """The report's heat-map figures (their PNGs inline)."""
    report = (folder / "out" / "report.html").read_text()
    start = report.index('<div class="gallery">', report.index('<section id="explanations">'))
    return report[start:report.index("</div>", start)]


@pytest.mark.slow
def test_a_cold_run_imports_no_tensorflow_and_writes_what_tensorflow_writes(
        tmp_path, fashion_subset_dir, fashion_mnist_holdout_dir):
    first, first_imported = retrain(tmp_path, fashion_subset_dir, run="first")
    assert first_imported  # nothing kept on this machine yet: TensorFlow traces and converts
    cold, cold_imported = retrain(tmp_path, fashion_subset_dir, run="cold")
    assert not cold_imported
    assert cold["bottlenecks_computed"] == first["bottlenecks_computed"] > 0
    assert written(tmp_path / "cold") == written(tmp_path / "first")
    results = [stable({key: document[key] for key in SAME}) for document in (first, cold)]
    assert results[0] == results[1]
    assert heat_map_figures(tmp_path / "cold") == heat_map_figures(tmp_path / "first") > 0
    assert gallery(tmp_path / "cold") == gallery(tmp_path / "first")  # the same maps
    assert classified(tmp_path / "cold", fashion_mnist_holdout_dir) >= 0.8


def specs_records(tmp_path: Path) -> list[Path]:
    """The kept extraction-specs records (`pipeline.extraction`), in the user cache and beside
    the vectors: the run-result records that name an engine."""
    return [record for record in tmp_path.rglob("run-results-v1/*/*.json")
            if '"engine"' in record.read_text()]


@pytest.mark.slow
def test_a_warm_run_without_a_specs_record_keeps_the_next_cold_run_off_tensorflow(
        tmp_path, fashion_subset_dir):
    """New code has no extraction-specs record (they are keyed by it), so its first run builds
    the extractor; when that run is warm (every vector cached), its int8 engine runs no image,
    and the record it writes must still name the model kept on this machine: else every later
    cold run would build the engine through TensorFlow again."""
    retrain(tmp_path, fashion_subset_dir, run="first")
    records = specs_records(tmp_path)
    assert records
    for record in records:  # as after a code change
        record.unlink()
    warm, _ = retrain(tmp_path, fashion_subset_dir, run="first")
    assert warm["bottlenecks_computed"] == 0
    cold, cold_imported = retrain(tmp_path, fashion_subset_dir, run="cold")
    assert cold["bottlenecks_computed"] > 0
    assert not cold_imported


@pytest.mark.slow
def test_a_warm_run_without_a_specs_record_derives_it_without_tensorflow(
        tmp_path, fashion_subset_dir):
    """A run whose vectors are all cached and that has no extraction-specs record (new code has
    none: they are keyed by it) derives the built-in's specs and its int8 engine's record
    without TensorFlow when the int8 model is kept on this machine, and records the same bytes.
    With the finished-run records present, as here, it imports no TensorFlow at all (the first
    run of new code lacks those too and imports it in the background from its start:
    `pipeline.run`)."""
    first, _ = retrain(tmp_path, fashion_subset_dir, run="first")
    written_first = specs_records(tmp_path)
    kept = {record.name: record.read_bytes() for record in written_first}
    for record in written_first:  # as after a code change
        record.unlink()
    warm, warm_imported = retrain(tmp_path, fashion_subset_dir, run="first")
    assert warm["bottlenecks_computed"] == 0
    assert not warm_imported
    assert stable({key: warm[key] for key in SAME}) == stable({key: first[key] for key in SAME})
    assert {record.name: record.read_bytes() for record in specs_records(tmp_path)} == kept


def finished_records(tmp_path: Path) -> list[Path]:
    """The records of finished runs (`pipeline.run`: this command with this cache, these flags
    on this machine), whose absence makes a run a first one."""
    return [record for record in tmp_path.rglob("run-results-v1/*/*.json")
            if record.read_text() == "{}\n"]


# The CLI, started with the collection counted as large (`pipeline.EARLY_TENSORFLOW_IMAGES`).
AS_LARGE = ("-c", "import runpy, sys, retrainer.pipeline as p; p.EARLY_TENSORFLOW_IMAGES = 0; "
                  "sys.argv[0] = 'retrain'; runpy.run_module('retrainer.cli.retrain', "
                  "run_name='__main__')")


@pytest.mark.slow
def test_a_first_run_of_a_large_collection_imports_tensorflow_only_for_a_stage_that_needs_it(
        tmp_path, fashion_subset_dir):
    """A first run (no finished-run record, as after a code change) imports TensorFlow in the
    background as soon as discovery has counted the images, unless there are more than
    EARLY_TENSORFLOW_IMAGES: then only a stage that needs it does (here none: the templates,
    the int8 model and the specs record are kept), so its memory is not beside the audit's."""
    first, _ = retrain(tmp_path, fashion_subset_dir, run="first")
    for record in finished_records(tmp_path):
        record.unlink()
    small, small_imported = retrain(tmp_path, fashion_subset_dir, run="first")
    assert small_imported
    records = finished_records(tmp_path)
    assert records
    for record in records:
        record.unlink()
    large, large_imported = retrain(tmp_path, fashion_subset_dir, run="first", launch=AS_LARGE)
    assert not large_imported
    assert large["bottlenecks_computed"] == small["bottlenecks_computed"] == 0
    assert stable({key: large[key] for key in SAME}) == stable({key: first[key] for key in SAME})
