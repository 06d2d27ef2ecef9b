"""`retrain-extract` on Beam's DaskRunner with a real Dask cluster: a `dask scheduler` and 2
`dask worker` processes on 127.0.0.1 (ports picked by the system), real Fashion-MNIST images, the
default extractor and precision. Also the runner choice: short names and unknown runners."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

pytest.importorskip("apache_beam")
distributed = pytest.importorskip("distributed")

from click.testing import CliRunner  # noqa: E402

from retrainer.beam.runners import DASK_RUNNER, pipeline_options  # noqa: E402
from retrainer.beam.transforms import MergeSummaries, summary  # noqa: E402
from retrainer.cache.bottlenecks import compute_bottlenecks  # noqa: E402
from retrainer.cache.shards import finished_runs, load_sharded, read_manifest  # noqa: E402
from retrainer.cli.extract import main as extract_main  # noqa: E402
from retrainer.cli.retrain import main as retrain_main  # noqa: E402
from retrainer.data.batches import file_digest  # noqa: E402
from retrainer.data.discovery import discover_images  # noqa: E402
from retrainer.engines.factory import create_engine  # noqa: E402
from retrainer.extractors import create_extractor  # noqa: E402
from tests.fixtures_pipeline import copy_classes, retrain_args  # noqa: E402

pytestmark = pytest.mark.beam
STARTUP_S = 90  # a scheduler and its workers answer within this, or the test fails
RUN_S = 300  # one retrain-extract run through the cluster


@contextlib.contextmanager
def dask_cluster(folder: Path, workers: int = 2) -> Iterator[distributed.Client]:
    """A `dask scheduler` and `workers` single-threaded `dask worker` processes (no nanny: a
    killed worker stays dead) on 127.0.0.1; yields a client of it. Every process is stopped on
    the way out, also when the test fails; should this process die first, the workers exit
    once the scheduler is gone (--death-timeout) and the scheduler once idle (--idle-timeout)."""
    scheduler_file = folder / "scheduler.json"
    dask = [sys.executable, "-m", "dask"]
    processes: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> None:
        with open(folder / f"{name}.log", "wb") as log:
            processes.append(subprocess.Popen([*dask, *args], stdout=log, stderr=log,
                                              start_new_session=True))

    client = None
    try:
        start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
              "--scheduler-file", str(scheduler_file), "--idle-timeout", f"{RUN_S}s")
        deadline = time.monotonic() + STARTUP_S
        while not scheduler_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert scheduler_file.is_file(), (folder / "scheduler.log").read_text()[-3000:]
        for index in range(workers):
            start(f"worker{index}", "worker", "--scheduler-file", str(scheduler_file),
                  "--host", "127.0.0.1", "--nthreads", "1", "--no-nanny", "--no-dashboard",
                  "--death-timeout", "60", "--name", f"worker{index}")
        client = distributed.Client(scheduler_file=str(scheduler_file), timeout=STARTUP_S)
        client.wait_for_workers(workers, timeout=STARTUP_S)
        yield client
    finally:
        if client is not None:
            client.close()
        for process in reversed(processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in reversed(processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=20)


def start_extract(images: Path, cache: Path, client: distributed.Client,
                  *extra: str) -> subprocess.Popen:
    """`retrain-extract --runner DaskRunner --dask_client_address ...` as a user runs it."""
    return subprocess.Popen(
        [sys.executable, "-m", "retrainer.cli.extract", "--image_dir", str(images),
         "--bottleneck_dir", str(cache), "--runner", "DaskRunner",
         "--dask_client_address", client.scheduler.address, "--json", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=RUN_S)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return process.returncode, out, err


def single_machine_vectors(images: Path, cache: Path) -> tuple[list[str], np.ndarray]:
    """The reference: `retrain`'s own stage, default extractor and precision, fresh cache;
    (digests, float32 [N, D]) of the decodable images."""
    paths = [image.path for image in discover_images(images).images]
    engine = create_engine(create_extractor("efficientnet_lite0"), "auto")
    result = compute_bottlenecks(paths, engine, cache, show_progress=False)
    decoded = [path for path, ok in zip(paths, result.ok) if ok]
    assert result.computed == len(decoded) == len(paths) - 1  # broken.png
    return [file_digest(path) for path in decoded], result.vectors[result.ok]


def shard_vectors(namespace: str) -> dict[str, np.ndarray]:
    manifest = read_manifest(finished_runs(namespace)[0])
    stored = load_sharded(namespace, manifest["vector_size"])
    return stored


@pytest.fixture
def photos(fashion_mnist_dir: Path, tmp_path: Path) -> Path:
    """Real images: 4 Fashion-MNIST classes x 25 PNGs, plus a corrupt file to name."""
    image_dir = copy_classes(fashion_mnist_dir, tmp_path / "images",
                             ("Trouser", "Bag", "Sneaker", "Dress"), 25)
    (image_dir / "Bag" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return image_dir


# --- the runner choice (no cluster) ----------------------------------------------------------

@pytest.mark.parametrize("name", ["DaskRunner", "daskrunner", "Dask", DASK_RUNNER])
def test_dask_runner_by_short_or_full_name(name):
    from apache_beam.options.pipeline_options import StandardOptions
    from apache_beam.runners.dask.dask_runner import DaskOptions

    options = pipeline_options(["--runner", name, "--dask_client_address", "tcp://h:1"], 32)
    assert options.view_as(StandardOptions).runner == DASK_RUNNER
    dask = options.view_as(DaskOptions)
    assert (dask.address, dask.partition_size) == ("tcp://h:1", 8)  # 256 images a partition


def test_unknown_runner_is_a_one_line_usage_error(tmp_path, color_image_dir):
    result = CliRunner().invoke(extract_main, [
        "--image_dir", str(color_image_dir), "--bottleneck_dir", str(tmp_path / "cache"),
        "--runner", "NoSuchRunner"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: --runner NoSuchRunner: unknown Beam runner. Pass "
                                    "one of ")
    assert "DaskRunner" in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "cache").exists()  # refused before anything was loaded or written


def test_summaries_are_plain_python_whatever_the_runner_hands_back():
    """DaskRunner hands numpy scalars and strings to the last step: the manifest must not care."""
    merge = MergeSummaries()
    parts = [summary(["b"], np.int64(3), np.int32(1), [[np.str_("/x/2.png"), "bad"]]),
             summary([np.str_("a")], 2, 0, [("/x/1.png", np.str_("worse"))])]
    total = merge.extract_output(merge.merge_accumulators(
        [merge.add_input(merge.create_accumulator(), part) for part in parts]))
    assert total == {"shards": ["a", "b"], "vectors": 5, "already_cached": 1,
                     "unreadable": [["/x/1.png", "worse"], ["/x/2.png", "bad"]]}
    assert json.loads(json.dumps(total)) == total


# --- a real cluster --------------------------------------------------------------------------

@pytest.mark.slow
def test_cluster_run_equals_single_machine_then_retrain_computes_nothing(tmp_path, photos):
    cache = tmp_path / "bottlenecks"  # where retrain_args points retrain
    with dask_cluster(tmp_path) as client:
        code, out, err = finish(start_extract(photos, cache, client, "--batch_size", "8"))
        assert code == 0, err[-3000:]
        ran_on = client.run(lambda dask_worker: dask_worker.state.executed_count)
    document = json.loads(out)
    broken = str(photos / "Bag" / "broken.png")
    assert (document["computed"], [item["path"] for item in document["unreadable"]]) == (
        100, [broken])
    assert len([count for count in ran_on.values() if count]) == 2  # both workers took tasks

    digests, reference = single_machine_vectors(photos, tmp_path / "reference")
    stored = shard_vectors(document["namespace"])
    assert len(stored) == 100
    np.testing.assert_allclose(np.stack([stored.get(digest) for digest in digests]), reference,
                               rtol=1e-5, atol=1e-5)

    args = retrain_args(tmp_path, photos, "--json", extractor="efficientnet_lite0", steps=50)
    after = json.loads(CliRunner().invoke(retrain_main, args, catch_exceptions=False).stdout)
    assert (after["bottlenecks_computed"], after["bottlenecks_reused"]) == (0, 100)


@pytest.mark.slow
def test_a_worker_killed_mid_run(tmp_path, photos, fashion_mnist_dir, record_property):
    """The run finishes through the other worker (or fails with one line and no marker); either
    way the cache ends complete and correct, with no stray shard file."""
    cache = tmp_path / "cache"
    # All 10 classes: enough batches that both workers are busy when one dies.
    copy_classes(fashion_mnist_dir, photos, sorted(path.name for path in fashion_mnist_dir.iterdir()
                                                   if path.is_dir()), 25)
    with dask_cluster(tmp_path) as client:
        process = start_extract(photos, cache, client, "--batch_size", "4",
                                "--dask_partition_size", "1")
        killed = kill_a_busy_worker(client, cache)
        code, out, err = finish(process)
        assert len(client.scheduler_info()["workers"]) == 1  # the scheduler saw it die
        namespace = next(cache.glob("*/*"))
        if code == 0:
            outcome = "finished"
            document = json.loads(out)
        else:
            outcome = "failed"
            lines = err.strip().splitlines()
            assert lines[-1].startswith("Error: ") and "Traceback" not in err, err[-3000:]
            assert finished_runs(str(namespace)) == []
            code, out, err = finish(start_extract(photos, cache, client, "--batch_size", "4"))
            assert code == 0, err[-3000:]
            document = json.loads(out)
    record_property("worker_kill", f"worker {killed} killed mid-run: the run {outcome}")
    runs = finished_runs(str(namespace))
    assert len(runs) == 1
    assert sorted(os.listdir(runs[0])) == sorted(
        ["manifest.json", "_SUCCESS", *read_manifest(runs[0])["shards"]])
    digests, reference = single_machine_vectors(photos, tmp_path / "reference")
    stored = shard_vectors(str(namespace))
    np.testing.assert_allclose(np.stack([stored.get(digest) for digest in digests]), reference,
                               rtol=1e-5, atol=1e-5)
    assert document["computed"] + document["already_cached"] == len(stored)


def kill_a_busy_worker(client: distributed.Client, cache: Path) -> str:
    """Once the run has written a shard, SIGKILL a worker that is running a task; its name."""
    pids = client.run(os.getpid)
    deadline = time.monotonic() + RUN_S
    while time.monotonic() < deadline:
        shards = list(cache.glob("*/*/shards/*/vectors-*"))
        busy = [address for address, tasks in client.processing().items() if tasks]
        if shards and busy:
            os.kill(pids[busy[0]], signal.SIGKILL)
            return client.scheduler_info()["workers"][busy[0]]["name"]
        time.sleep(0.05)
    raise AssertionError("the run wrote no shard while a worker was busy")
