"""`retrain-extract` on real Beam runners: FnApiRunner in memory and with 2 worker processes (which
pickle the DoFns and the model handler), and the PortableRunner against Beam's local job service in
LOOPBACK mode. The extractor is a real TF2 SavedModel loaded by path in every worker; the images are
real Fashion-MNIST PNGs plus files the pipeline must skip or dead-letter."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("apache_beam")

from click.testing import CliRunner

from retrainer.cache.bottlenecks import compute_bottlenecks
from retrainer.cache.entries import BottleneckCache
from retrainer.cache.shards import finished_runs, load_sharded
from retrainer.cli.retrain import main as retrain_main
from retrainer.config import DEFAULT_EXTRACTOR
from retrainer.data.batches import file_digest
from retrainer.data.discovery import discover_images
from retrainer.extractors import create_extractor
from tests.fixtures_data import make_color_image_dir
from tests.fixtures_hub import module_kernel, save_tf2_module
from tests.fixtures_photos import write_clipart_dir
from tests.fixtures_pipeline import retrain_args
from tests.fixtures_shards import write_shard_run

pytestmark = pytest.mark.beam
MULTI_PROCESS = ["--runner", "FnApiRunner", "--direct_running_mode", "multi_processing",
                 "--direct_num_workers", "2"]


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory) -> Path:
    """A real TF2 SavedModel feature-vector module (32x32 -> 8), loaded by path in each worker."""
    return save_tf2_module(tmp_path_factory.mktemp("module") / "module", module_kernel())


def add_files_to_skip(image_dir: Path) -> Path:
    """An undecodable image (dead letter) and files discovery never picks up (dropped)."""
    first_class = sorted(path for path in image_dir.iterdir() if path.is_dir())[0]
    (first_class / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (first_class / ".hidden.png").write_bytes(b"not even read")
    (first_class / "notes.txt").write_text("not an image name")
    shutil.copy(next(first_class.glob("*.png")), image_dir / "loose.png")  # in no class folder
    return image_dir


@pytest.fixture
def images(fashion_mnist_dir: Path, tmp_path: Path) -> Path:
    """Real Fashion-MNIST: 10 classes x 25 PNGs, plus the files above."""
    return add_files_to_skip(Path(shutil.copytree(fashion_mnist_dir, tmp_path / "images")))


def image_paths(image_dir: Path) -> list[Path]:
    return [image.path for image in discover_images(image_dir).images]


def single_machine_vectors(paths: list[Path], module: Path, cache: Path) -> np.ndarray:
    """The reference: `retrain`'s own path into a fresh .npy cache."""
    result = compute_bottlenecks(paths, create_extractor(os.fspath(module)), cache,
                                 show_progress=False)
    return result.vectors[result.ok]


def extract(image_dir: Path, cache: Path, module: Path, *beam_args: str) -> dict:
    """`retrain-extract ... --json` as a user runs it (its own process); returns the document."""
    completed = subprocess.run(
        [sys.executable, "-m", "retrainer.cli.extract", "--image_dir", str(image_dir),
         "--bottleneck_dir", str(cache), "--tfhub_module", str(module), "--json", *beam_args],
        capture_output=True, text=True, timeout=240,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout)


def assert_cache_matches_reference(paths, module: Path, cache: Path, reference: np.ndarray):
    """`retrain`'s lookup finds every vector in `cache`, equal to the single-machine path's."""
    reused = compute_bottlenecks(paths, create_extractor(os.fspath(module)), cache,
                                 show_progress=False)
    assert (reused.computed, reused.reused) == (0, len(reference))
    np.testing.assert_allclose(reused.vectors[reused.ok], reference, rtol=1e-5, atol=1e-6)


def test_in_memory_run_equals_single_machine_and_names_bad_images(tmp_path, module_dir):
    from retrainer.beam.pipeline import ExtractConfig, run_extraction

    image_dir = add_files_to_skip(make_color_image_dir(tmp_path / "images", per_class=5))
    config = ExtractConfig(str(image_dir), str(tmp_path / "cache"), os.fspath(module_dir),
                           batch_size=4)
    result = run_extraction(config, ["--runner", "FnApiRunner"])
    broken = str(image_dir / "blue" / "broken.png")
    assert (result.computed, result.already_cached) == (15, 0)
    assert [path for path, _ in result.unreadable] == [broken]
    assert "truncated or corrupt" in result.unreadable[0][1]
    paths = image_paths(image_dir)
    reference = single_machine_vectors(paths, module_dir, tmp_path / "reference")
    assert_cache_matches_reference(paths, module_dir, tmp_path / "cache", reference)

    again = run_extraction(config, ["--runner", "FnApiRunner"])
    assert (again.computed, again.already_cached, again.run_dir) == (0, 15, None)
    assert finished_runs(result.namespace) == [result.run_dir]  # nothing added


def test_default_hand_off_reuses_every_vector(tmp_path):
    """The documented hand-off with both tools' defaults: the built-in extractor at `auto`
    precision (int8 on CPUs with AVX2 or 64-bit Arm), real clipart cut from photos."""
    images = write_clipart_dir(tmp_path / "clipart", ("icons_a", "icons_b", "icons_c"), 5)
    cache = tmp_path / "bottlenecks"  # where retrain_args points retrain
    completed = subprocess.run(
        [sys.executable, "-m", "retrainer.cli.extract", "--image_dir", str(images),
         "--bottleneck_dir", str(cache), "--json"], capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stderr[-3000:]
    document = json.loads(completed.stdout)
    assert document["computed"] == 15
    args = retrain_args(tmp_path, images, "--json", extractor=DEFAULT_EXTRACTOR, steps=20)
    result = CliRunner().invoke(retrain_main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    after = json.loads(result.stdout)
    assert (after["bottlenecks_computed"], after["bottlenecks_reused"]) == (0, 15)
    assert after["extractor_precision"] == document["extractor_precision"]


@pytest.mark.slow
def test_two_worker_processes_then_retrain_reuses_every_vector(tmp_path, images, module_dir):
    cache = tmp_path / "bottlenecks"  # where retrain_args points retrain
    document = extract(images, cache, module_dir, *MULTI_PROCESS)
    paths = image_paths(images)
    assert (document["computed"], len(paths)) == (250, 251)  # broken.png is dead-lettered
    assert [item["path"] for item in document["unreadable"]] == [
        str(sorted(path for path in images.iterdir() if path.is_dir())[0] / "broken.png")]
    reference = single_machine_vectors(paths, module_dir, tmp_path / "reference")
    assert_cache_matches_reference(paths, module_dir, cache, reference)

    assert finished_runs(document["namespace"]) == [document["run_dir"]]

    args = retrain_args(tmp_path, images, "--json", extractor=os.fspath(module_dir), steps=100)
    after_beam = json.loads(CliRunner().invoke(retrain_main, args, catch_exceptions=False).stdout)
    assert (after_beam["bottlenecks_computed"], after_beam["bottlenecks_reused"]) == (0, 250)
    fresh_args = retrain_args(tmp_path / "fresh", images, "--json",
                              extractor=os.fspath(module_dir), steps=100)
    fresh = json.loads(CliRunner().invoke(retrain_main, fresh_args, catch_exceptions=False).stdout)
    assert fresh["bottlenecks_computed"] == 250
    assert after_beam["test_accuracy"] == fresh["test_accuracy"]


@pytest.mark.slow
def test_portable_runner_against_the_local_job_service(tmp_path, module_dir):
    image_dir = add_files_to_skip(make_color_image_dir(tmp_path / "images", per_class=5))
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    service = subprocess.Popen(
        [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
         "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port)
        document = extract(image_dir, tmp_path / "cache", module_dir, "--runner", "PortableRunner",
                           "--job_endpoint", f"localhost:{port}", "--environment_type", "LOOPBACK")
    finally:
        service.terminate()
        service.wait(timeout=30)
    assert document["computed"] == 15 and len(document["unreadable"]) == 1
    paths = image_paths(image_dir)
    reference = single_machine_vectors(paths, module_dir, tmp_path / "reference")
    assert_cache_matches_reference(paths, module_dir, tmp_path / "cache", reference)


@pytest.mark.slow
def test_killed_run_is_never_read_and_a_rerun_completes_the_cache(tmp_path, images, module_dir):
    cache = tmp_path / "cache"
    paths = image_paths(images)
    namespace = os.fspath(BottleneckCache(cache, create_extractor(os.fspath(module_dir)).spec)
                          .directory)
    process = subprocess.Popen(
        [sys.executable, "-m", "retrainer.cli.extract", "--image_dir", str(images),
         "--bottleneck_dir", str(cache), "--tfhub_module", str(module_dir), "--batch_size", "1",
         *MULTI_PROCESS], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)  # its own process group: the kill takes the workers too
    shards = Path(namespace) / "shards"
    deadline = time.monotonic() + 120
    while not any(shards.glob("*/vectors-*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)  # mid-run: a worker is writing its first shard
    process.wait(timeout=30)
    assert shards.is_dir() and finished_runs(namespace) == []  # killed before its marker
    assert len(load_sharded(namespace, 8)) == 0
    # A half-finished run with wrong vectors for every image is never read either.
    write_shard_run(namespace, "99990101T000000Z-half", [file_digest(path) for path in paths],
                    np.full((len(paths), 8), 99.0, np.float32), finished=False)

    document = extract(images, cache, module_dir, *MULTI_PROCESS)
    assert document["computed"] == 250
    reference = single_machine_vectors(paths, module_dir, tmp_path / "reference")
    assert_cache_matches_reference(paths, module_dir, cache, reference)


def _wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as client:
            if client.connect_ex(("localhost", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"Beam's job service did not listen on port {port}")
