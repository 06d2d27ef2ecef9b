"""Process faults on the real `retrain` process: Ctrl-C, SIGTERM and SIGKILL at chosen points, and
two runs sharing one cache. Whatever happens, the cache holds only whole entries, an output is
either absent or a complete file, and a rerun computes only what is missing.

Subprocesses cannot see the in-process `tiny_test` extractor, so they use a local SavedModel
(`slow_module`, tests/fixtures_faults.py) that takes a fixed time per batch: the kill points are
found by watching the run (cache entries appearing, log lines, temp files), not by guessing delays.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from retrainer.cli.label_image import main as label_image_main
from retrainer.cli.retrain import main as retrain_main
from retrainer.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from tests.fixtures_data import make_color_image_dir, write_decode_corpus
from tests.fixtures_faults import (
    INTERRUPTED_MESSAGE,
    SLOW_MODULE_VECTOR,
    assert_complete_graph,
    assert_whole_entries,
    cache_entries,
    save_slow_module,
    start_retrain,
    temp_files,
    wait_until,
)
from tests.fixtures_pipeline import retrain_args

PER_CLASS = 96  # 3 classes: 288 images, 9 extraction batches of 32
IMAGES = 3 * PER_CLASS
BATCH = 32


def retrain(*args: object):
    return CliRunner().invoke(retrain_main, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    return make_color_image_dir(tmp_path_factory.mktemp("many") / "images", per_class=PER_CLASS)


@pytest.mark.parametrize(
    "signal_name, exit_code",
    [("SIGINT", EXIT_INTERRUPTED), ("SIGTERM", EXIT_INTERRUPTED), ("SIGKILL", -signal.SIGKILL)],
)
def test_stopped_during_extraction_keeps_whole_vectors_and_the_rerun_resumes(
        tmp_path, slow_module, many_images, signal_name, exit_code):
    cache = tmp_path / "bottlenecks"
    args = retrain_args(tmp_path, many_images, extractor=str(slow_module))
    process = start_retrain(args, tmp_path)
    wait_until(lambda: len(cache_entries(cache)) >= BATCH, process)
    process.send_signal(getattr(signal, signal_name))
    stdout, stderr = process.communicate(timeout=120)

    assert process.returncode == exit_code, stderr
    if signal_name != "SIGKILL":  # Ctrl-C and SIGTERM stop cleanly, with one short line
        assert stderr.rstrip("\n").splitlines()[-1] == INTERRUPTED_MESSAGE
        assert "Traceback" not in stderr and stdout == ""
        assert not temp_files(cache)
    kept = assert_whole_entries(cache, SLOW_MODULE_VECTOR)
    assert BATCH <= kept < IMAGES
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.pb"))

    rerun = retrain(*args, "--json")
    assert rerun.exit_code == EXIT_OK, rerun.output
    document = json.loads(rerun.stdout)
    assert document["bottlenecks_computed"] == IMAGES - kept
    assert document["bottlenecks_reused"] == kept
    assert "Cached bottleneck" not in rerun.stderr  # no damaged entry was ever found
    assert_complete_graph(tmp_path / "out" / "graph.pb")
    assert assert_whole_entries(cache, SLOW_MODULE_VECTOR) == IMAGES


def test_two_runs_sharing_a_cache_at_the_same_time_both_finish(tmp_path, slow_module):
    image_dir = make_color_image_dir(tmp_path / "images", per_class=40)
    corpus = write_decode_corpus(tmp_path / "corpus")
    for name in ("bomb_moderate.png", "truncated.jpg"):
        (image_dir / "red" / name).write_bytes(corpus[name].read_bytes())
    cache = tmp_path / "shared_cache"
    runs = [tmp_path / "run_a", tmp_path / "run_b"]
    processes = []
    for run in runs:
        run.mkdir()
        args = [*retrain_args(run, image_dir, "--json", extractor=str(slow_module)),
                "--bottleneck_dir", str(cache)]
        processes.append(start_retrain(args, run))
    outputs = [process.communicate(timeout=300) for process in processes]

    for process, (stdout, stderr), run in zip(processes, outputs, runs):
        assert process.returncode == EXIT_OK, stderr
        assert "Traceback" not in stderr and "DecompressionBombWarning" not in stderr
        document = json.loads(stdout)
        assert document["bottlenecks_computed"] + document["bottlenecks_reused"] == 120
        assert {entry["path"] for entry in document["skipped"]} == {"red/bomb_moderate.png",
                                                                    "red/truncated.jpg"}
        assert f"WARNING: Skipping {image_dir / 'red' / 'bomb_moderate.png'}: too large" in stderr
        assert_complete_graph(run / "out" / "graph.pb")
    assert assert_whole_entries(cache, SLOW_MODULE_VECTOR) == 120
    assert not temp_files(cache)


def test_full_disk_mid_run_is_one_line_and_exit_2_and_keeps_nothing_half_written(tmp_path,
                                                                                 slow_module):
    """A write the machine refuses (here: over a file size limit, as on a full disk) stops the run
    with one line naming the file, not a traceback; no temp file is left behind."""
    image_dir = make_color_image_dir(tmp_path / "images", per_class=4)
    args = retrain_args(tmp_path, image_dir, extractor=str(slow_module))
    process = start_retrain(args, tmp_path, max_file_bytes=100)  # a cache entry takes 160 bytes
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == EXIT_USAGE, stderr
    last = stderr.rstrip("\n").splitlines()[-1]
    assert last.startswith(f"Error: File too large: {tmp_path / 'bottlenecks'}")
    assert last.endswith(".npy. Free some space or fix the permissions (or pass another path), "
                         "then rerun: work done so far is kept.")
    assert "Traceback" not in stderr and stdout == ""
    assert not cache_entries(tmp_path / "bottlenecks") and not temp_files(tmp_path / "bottlenecks")


# --- slow: SIGKILL at the training log line, during export, and at random points ------------------


@pytest.mark.slow
def test_killed_during_training_writes_nothing_and_the_rerun_reuses_every_vector(
        tmp_path, slow_module, many_images):
    args = retrain_args(tmp_path, many_images, extractor=str(slow_module))
    process = start_retrain([*args, "--how_many_training_steps", "1000000"], tmp_path)
    for line in process.stderr:
        if line.startswith("INFO: Step 0: "):
            process.kill()
            break
    process.communicate(timeout=120)
    assert process.returncode == -signal.SIGKILL
    assert not (tmp_path / "out" / "graph.pb").exists()
    assert not (tmp_path / "out" / "labels.txt").exists()

    rerun = retrain(*args, "--json")
    assert rerun.exit_code == EXIT_OK, rerun.output
    document = json.loads(rerun.stdout)
    assert (document["bottlenecks_computed"], document["bottlenecks_reused"]) == (0, IMAGES)
    assert_complete_graph(tmp_path / "out" / "graph.pb")


@pytest.mark.slow
def test_killed_while_writing_the_graph_keeps_the_previous_graph(tmp_path):
    """A 64 MB graph takes long enough to write that the kill lands mid-write, on purpose."""
    module = save_slow_module(tmp_path / "big_module", iterations=1, padding_floats=16 * 2**20)
    image_dir = make_color_image_dir(tmp_path / "images", per_class=8)
    args = retrain_args(tmp_path, image_dir, extractor=str(module))
    assert retrain(*args, "--seed", "1").exit_code == EXIT_OK
    out = tmp_path / "out"
    previous = {name: (out / name).read_bytes()
                for name in ("graph.pb", "graph.pb.meta.json", "labels.txt")}

    process = start_retrain([*args, "--seed", "2"], tmp_path)
    wait_until(lambda: any(path.name.startswith(".graph.pb.") for path in out.iterdir()), process,
               poll=0.0005)
    process.kill()
    process.communicate(timeout=120)

    leftovers = [path for path in out.iterdir() if path.name.startswith(".graph.pb.")]
    assert leftovers and all(path.name.endswith(".tmp") for path in leftovers)
    assert len(leftovers[0].read_bytes()) < len(previous["graph.pb"])  # the kill landed mid-write
    assert (out / "graph.pb").read_bytes() == previous["graph.pb"]
    assert (out / "graph.pb.meta.json").read_bytes() == previous["graph.pb.meta.json"]
    assert (out / "labels.txt").read_bytes() == previous["labels.txt"]
    image = sorted(image_dir.rglob("*.png"))[0]
    served = CliRunner().invoke(label_image_main, ["--graph", str(out / "graph.pb"), str(image)])
    assert served.exit_code == EXIT_OK, served.output

    assert retrain(*args, "--seed", "2").exit_code == EXIT_OK
    assert assert_complete_graph(out / "graph.pb") != previous["graph.pb"]


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGINT"])
def test_stopped_at_random_points_then_rerun_matches_an_uninterrupted_run(tmp_path, slow_module,
                                                                          signal_name):
    """Seeded signal delays spread over a run's work (from its "Found N images" line to its end):
    after every stop the cache and outputs are whole (after Ctrl-C also: exit 130, one line, no
    temp file); the final rerun gives the uninterrupted run's classifier."""
    image_dir = make_color_image_dir(tmp_path / "images", per_class=64)
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    for folder in (reference_dir, resumed_dir):
        folder.mkdir()
    reference = start_retrain(retrain_args(reference_dir, image_dir, "--json", steps=2000,
                                           extractor=str(slow_module)), reference_dir)
    work_started = _wait_for_work(reference)
    stdout, stderr = reference.communicate(timeout=300)
    work = time.monotonic() - work_started
    assert reference.returncode == EXIT_OK, stderr
    expected = json.loads(stdout)

    args = retrain_args(resumed_dir, image_dir, "--json", extractor=str(slow_module), steps=2000)
    out = resumed_dir / "out"
    rng = random.Random(20240607)
    kills = 6
    for stratum in range(kills):  # one delay in each sixth of the work, so all stages get hit
        process = start_retrain(args, resumed_dir)
        _wait_for_work(process)
        time.sleep(rng.uniform(stratum / kills, (stratum + 1) / kills) * work)
        process.send_signal(getattr(signal, signal_name))
        stdout, stderr = process.communicate(timeout=120)
        if signal_name == "SIGINT":
            assert "Traceback" not in stderr and not temp_files(resumed_dir)
            if process.returncode == EXIT_INTERRUPTED:
                assert stderr.rstrip("\n").splitlines()[-1] == INTERRUPTED_MESSAGE
            else:  # too late to interrupt: the run had finished (Python's exit then dies of it)
                assert process.returncode in (EXIT_OK, -signal.SIGINT), stderr
                assert json.loads(stdout)["outputs"]["output_graph"] == str(out / "graph.pb")
        assert_whole_entries(resumed_dir / "bottlenecks", SLOW_MODULE_VECTOR)
        if (out / "graph.pb").exists():
            assert_complete_graph(out / "graph.pb")
        if (out / "labels.txt").exists():
            assert (out / "labels.txt").read_text() == "blue\ngreen\nred\n"

    final = start_retrain(args, resumed_dir)
    stdout, stderr = final.communicate(timeout=300)
    assert final.returncode == EXIT_OK, stderr
    assert "Cached bottleneck" not in stderr
    document = json.loads(stdout)
    assert document["bottlenecks_computed"] + document["bottlenecks_reused"] == 192
    assert document["counts"] == expected["counts"]
    assert document["test_accuracy"] == pytest.approx(expected["test_accuracy"])
    images = [str(path) for path in sorted(image_dir.rglob("*.png"))[::16]]
    scores = [_label_image_scores(folder / "out" / "graph.pb", images)
              for folder in (reference_dir, resumed_dir)]
    np.testing.assert_allclose(scores[0], scores[1], atol=1e-4)


def _wait_for_work(process) -> float:
    """Read the run's stderr up to its "Found N images" line; returns when that was."""
    for line in process.stderr:
        if line.startswith("INFO: Found "):
            return time.monotonic()
    pytest.fail(f"retrain ended (exit {process.wait()}) before finding its images")


def _label_image_scores(graph: Path, images: list[str]) -> np.ndarray:
    result = CliRunner().invoke(label_image_main, ["--graph", str(graph), "--json", *images])
    assert result.exit_code == EXIT_OK, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return np.array([[prediction["score"] for prediction in sorted(line["predictions"],
                                                                  key=lambda p: p["label"])]
                     for line in lines])


def test_a_rerun_removes_temporaries_left_by_a_killed_export_but_not_a_live_writers(tmp_path):
    """SIGKILL leaves `.NAME.<hex>.tmp` beside an export; the next run cleans up old ones only."""
    image_dir = make_color_image_dir(tmp_path / "images")
    out = tmp_path / "out"
    out.mkdir()
    hour_ago = time.time() - 2 * 3600
    stale = [out / ".graph.pb.0123456789abcdef.tmp", out / ".graph.pb.meta.json.fedcba9876543210.tmp",
             out / ".labels.txt.00112233445566ff.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
        os.utime(path, (hour_ago, hour_ago))
    live = out / ".graph.pb.aaaaaaaaaaaaaaaa.tmp"  # another run writing the same graph right now
    live.write_bytes(b"being written")
    unrelated = out / ".notes.0123456789abcdef.tmp"
    unrelated.write_bytes(b"not ours")
    os.utime(unrelated, (hour_ago, hour_ago))

    result = retrain(*retrain_args(tmp_path, image_dir))

    assert result.exit_code == EXIT_OK, result.output
    assert not any(path.exists() for path in stale)
    assert live.exists() and unrelated.exists()
    assert_complete_graph(out / "graph.pb")
