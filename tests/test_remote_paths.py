"""Remote paths (gs://, ram://...) through tf.io.gfile, tested on TensorFlow's in-memory ram://.

ram:// lives inside one process, so every run here is in-process (click's CliRunner). Each test
uses its own ram:// prefix (the file system is shared by the whole test session). GCS itself is
not reachable here: these tests exercise the code path, not Google's service.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tensorflow as tf
from click.testing import CliRunner

from retrainer.cli.label_image import main as label_image
from retrainer.cli.retrain import main as retrain
from retrainer.config import RetrainConfig
from retrainer.errors import EXIT_USAGE
from retrainer.io.storage import RemotePath, as_path, upload_tree
from tests.fixtures_data import make_color_image_dir

REPO = Path(__file__).resolve().parents[1]
COMPARED = ("labels", "counts", "train_accuracy", "cross_entropy", "validation_accuracy",
            "test_accuracy", "test_per_class", "bottlenecks_computed", "bottlenecks_reused")


def upload(local: Path, url: str) -> str:
    """Copy a local folder tree to `url` (ram://...); returns `url`."""
    upload_tree(local, url)
    return url


def output_args(cache: str, out: str) -> list[str]:
    """Every output of a retrain run, and the cache, under the prefixes `cache` and `out`."""
    return [
        "--tfhub_module", "tiny_test", "--how_many_training_steps", "40",
        "--bottleneck_dir", cache,
        "--output_graph", f"{out}/graph.pb", "--output_labels", f"{out}/labels.txt",
        "--summaries_dir", f"{out}/logs", "--checkpoint_path", f"{out}/checkpoint/head",
        "--intermediate_output_graphs_dir", f"{out}/intermediate",
        "--intermediate_store_frequency", "20",
        "--metrics_file", f"{out}/metrics.json", "--report_html", f"{out}/report.html",
        "--audit_file", f"{out}/audit.json", "--saved_model_dir", f"{out}/saved_model",
        "--tflite_output_file", f"{out}/model.tflite", "--json",
    ]


def run_retrain(image_dir: str, cache: str, out: str) -> dict:
    result = CliRunner().invoke(retrain, ["--image_dir", image_dir, *output_args(cache, out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def classify(graph: str, images: str) -> dict[str, tuple[str, float]]:
    """label-image --json on a folder: {path relative to the folder: (label, score)}."""
    result = CliRunner().invoke(label_image, ["--graph", graph, "--json", images],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    return {row["path"][len(images) + 1:]: (row["label"], row["score"]) for row in rows}


@pytest.fixture
def ram_prefix(tmp_path) -> str:
    """A ram:// prefix of this test's own, removed afterwards."""
    prefix = f"ram://{tmp_path.name}"
    yield prefix
    if tf.io.gfile.exists(prefix):
        tf.io.gfile.rmtree(prefix)


def test_retrain_and_label_image_on_ram_equal_the_local_run(tmp_path, ram_prefix):
    local_images = make_color_image_dir(tmp_path / "colors", per_class=10)
    (local_images / "notes.txt").write_text("not an image")  # ignored alike in both runs
    (local_images / "red" / ".hidden.png").write_bytes(b"")
    remote_images = upload(local_images, f"{ram_prefix}/colors")
    local_out, remote_out = tmp_path / "out", f"{ram_prefix}/out"

    local = run_retrain(str(local_images), str(tmp_path / "cache"), str(local_out))
    remote = run_retrain(remote_images, f"{ram_prefix}/cache", remote_out)

    assert {key: remote[key] for key in COMPARED} == {key: local[key] for key in COMPARED}
    assert remote["skipped"] == local["skipped"] and len(remote["skipped"]) == 2
    assert remote["outputs"]["output_graph"] == f"{remote_out}/graph.pb"
    assert RemotePath(f"{remote_out}/graph.pb").read_bytes() == (local_out / "graph.pb").read_bytes()
    for name in ("labels.txt", "audit.json", "metrics.json", "report.html", "model.tflite",
                 "training_curves.png", "intermediate/intermediate_20.pb",
                 "checkpoint/head.index", "saved_model/saved_model.pb",
                 "saved_model/assets/labels.txt"):
        assert tf.io.gfile.exists(f"{remote_out}/{name}"), name
    assert tf.io.gfile.glob(f"{remote_out}/logs/train/events.out.tfevents.*")
    assert json.loads(RemotePath(f"{remote_out}/metrics.json").read_text())["flags"][
        "image_dir"] == remote_images
    assert not list(Path.cwd().glob("ram:*")), "a URL was written as a local path"

    for model in ("graph.pb", "model.tflite", "saved_model"):
        from_ram = classify(f"{remote_out}/{model}", remote_images)
        assert from_ram == classify(str(local_out / model), str(local_images)), model
        assert len(from_ram) == 30

    rerun = run_retrain(remote_images, f"{ram_prefix}/cache", remote_out)
    assert (rerun["bottlenecks_computed"], rerun["bottlenecks_reused"]) == (0, 30)
    assert rerun["audit"]["cached"] is True


def test_audit_signatures_cached_on_ram_are_read_back(tmp_path, ram_prefix):
    from retrainer.cache.signatures import SignatureCache
    from retrainer.data.batches import decode_signatures, file_digest

    images = upload(make_color_image_dir(tmp_path / "colors"), f"{ram_prefix}/colors")
    paths = sorted(as_path(images).glob("*/*.png"))
    digests = [file_digest(path) for path in paths]
    signatures = decode_signatures(paths)
    assert signatures.hashes.all() and signatures.thumbnails.any()
    SignatureCache(f"{ram_prefix}/cache", (8, 8)).store(digests, signatures)
    tf.io.gfile.rmtree(images)  # now only the cache can answer
    cached, found = SignatureCache(f"{ram_prefix}/cache", (8, 8)).lookup(digests)
    assert found.all()
    assert (cached.thumbnails == signatures.thumbnails).all()
    assert (cached.hashes == signatures.hashes).all()


def test_url_paths_survive_retrain_config():
    config = RetrainConfig(
        image_dir="gs://bucket/photos", bottleneck_dir="gs://bucket/cache/",
        output_graph="gs://bucket/out/graph.pb", metrics_file="ram://run/metrics.json",
        saved_model_dir="s3://other/saved", tflite_output_file="gs://bucket/out/model.tflite",
        report_html="local/report.html",
    )
    assert str(config.image_dir) == "gs://bucket/photos"
    assert str(config.bottleneck_dir) == "gs://bucket/cache"  # a trailing slash is dropped
    assert str(config.output_graph.parent / "labels.txt") == "gs://bucket/out/labels.txt"
    assert config.output_graph.name == "graph.pb" and config.output_graph.suffix == ".pb"
    assert str(config.metrics_file) == "ram://run/metrics.json"
    assert str(config.saved_model_dir) == "s3://other/saved"
    assert str(config.tflite_output_file.with_name("m_int8.tflite")) == "gs://bucket/out/m_int8.tflite"
    assert config.report_html == Path("local/report.html") and isinstance(config.output_labels, Path)
    assert as_path("gs://bucket").parent == as_path("gs://bucket")


def test_unknown_scheme_is_a_one_line_usage_error(tmp_path):
    images = make_color_image_dir(tmp_path / "colors")
    result = CliRunner().invoke(
        retrain, ["--image_dir", str(images), *output_args(str(tmp_path / "cache"), "nope://b/out")])
    assert result.exit_code == EXIT_USAGE
    assert "no file system for nope:// (path nope://b/out" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1

    result = CliRunner().invoke(label_image, ["--graph", "nope://b/graph.pb", str(images)])
    assert result.exit_code == EXIT_USAGE and "no file system for nope://" in result.stderr


def test_missing_remote_paths_are_one_line_errors(tmp_path, ram_prefix):
    result = CliRunner().invoke(
        retrain, ["--image_dir", f"{ram_prefix}/missing",
                  *output_args(f"{ram_prefix}/cache", str(tmp_path / "out"))])
    assert result.exit_code == EXIT_USAGE
    assert f"Image directory '{ram_prefix}/missing' does not exist" in result.stderr

    images = make_color_image_dir(tmp_path / "colors")
    result = CliRunner().invoke(label_image, ["--graph", f"{ram_prefix}/graph.pb", str(images)])
    assert result.exit_code == EXIT_USAGE
    assert f"cannot read graph {ram_prefix}/graph.pb" in result.stderr
    assert "Traceback" not in result.stderr


def test_local_discovery_does_not_import_tensorflow(tmp_path):
    images = make_color_image_dir(tmp_path / "colors")
    code = ("import sys; from retrainer.data.discovery import discover_images; "
            f"assert len(discover_images({str(images)!r}).images) == 18; "
            "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.beam
def test_retrain_extract_names_a_scheme_beam_cannot_read(tmp_path):
    pytest.importorskip("apache_beam")
    from retrainer.cli.extract import main as extract

    images = make_color_image_dir(tmp_path / "colors")
    result = CliRunner().invoke(extract, ["--image_dir", str(images),
                                          "--bottleneck_dir", "ram://cache"])
    assert result.exit_code == EXIT_USAGE
    assert "--bottleneck_dir ram://cache: Beam has no file system for ram://" in result.stderr
    assert "Traceback" not in result.stderr


def test_quality_gates_hold_remote_outputs_until_they_pass(tmp_path, ram_prefix):
    images = upload(make_color_image_dir(tmp_path / "colors", per_class=10), f"{ram_prefix}/colors")
    out = f"{ram_prefix}/out"
    result = CliRunner().invoke(
        retrain, ["--image_dir", images, *output_args(f"{ram_prefix}/cache", out),
                  "--assert_accuracy_at_least", "0.5"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    for name in ("intermediate/intermediate_20.pb", "checkpoint/head.index"):
        assert tf.io.gfile.exists(f"{out}/{name}"), name
    assert not tf.io.gfile.glob(f"{out}/.*.tmp"), "a staging folder was left behind"


@pytest.mark.slow
def test_default_extractor_on_ram_equals_the_local_run(tmp_path, ram_prefix, fashion_subset_dir):
    remote_images = upload(fashion_subset_dir, f"{ram_prefix}/fashion")
    answers = []
    for images, root in ((str(fashion_subset_dir), str(tmp_path)), (remote_images, ram_prefix)):
        args = ["--image_dir", images, "--bottleneck_dir", f"{root}/cache",
                "--output_graph", f"{root}/out/graph.pb", "--output_labels", f"{root}/out/labels.txt",
                "--summaries_dir", f"{root}/out/logs", "--checkpoint_path", f"{root}/out/ckpt/head",
                "--metrics_file", "", "--report_html", "", "--skip_audit",
                "--how_many_training_steps", "50", "--json"]
        result = CliRunner().invoke(retrain, args, catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
        document = json.loads(result.stdout)
        answers.append(({key: document[key] for key in COMPARED},
                         as_path(f"{root}/out/graph.pb").read_bytes(),
                         classify(f"{root}/out/graph.pb", f"{images}/Bag")))
    assert answers[1] == answers[0]
    assert answers[0][0]["test_accuracy"] > 0.8


def test_a_killed_runs_remote_temporaries_are_swept_after_3_days(tmp_path, ram_prefix, caplog):
    """The run's start sweeps `.NAME.<hex>-<start>.tmp` left beside a remote export; newer stay."""
    from retrainer.io.storage import write_remote_bytes
    from retrainer.pipeline.preflight import remove_stale_export_temporaries

    graph = as_path(f"{ram_prefix}/out/graph.pb")
    graph.parent.mkdir(parents=True, exist_ok=True)
    write_remote_bytes(graph, b"graph")
    assert tf.io.gfile.listdir(graph.parent.url) == ["graph.pb"]  # a finished write leaves none
    now = int(time.time())
    left = {age: graph.parent / f".graph.pb.{'ab' * 8}-{now - age}.tmp"
            for age in (4 * 24 * 3600, 3600)}
    unrelated = graph.parent / f".other.pb.{'cd' * 8}-{now - 5 * 24 * 3600}.tmp"
    for path in (*left.values(), unrelated):
        write_remote_bytes(path, b"partial")
    config = RetrainConfig(image_dir=tmp_path, output_graph=graph,
                           output_labels=f"{ram_prefix}/out/labels.txt")
    with caplog.at_level("INFO"):
        remove_stale_export_temporaries(config.exports)
    assert sorted(tf.io.gfile.listdir(graph.parent.url)) == sorted(
        [left[3600].name, unrelated.name, "graph.pb"])
    assert any(str(left[4 * 24 * 3600]) in message for message in caplog.messages)
