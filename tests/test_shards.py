"""Sharded bottleneck storage (retrainer/cache/shards.py): finished runs only, duplicates dropped, and
`compute_bottlenecks` reading shards and `.npy` entries alike."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from retrainer.cache.bottlenecks import compute_bottlenecks
from retrainer.cache.entries import BottleneckCache
from retrainer.cache.shards import cached_digests, load_sharded, remove_abandoned_runs
from retrainer.data.batches import file_digest
from tests.fixtures_data import make_color_image_dir
from tests.fixtures_shards import write_shard_run


def digests_and_vectors(count: int, size: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    digests = [f"{index:064x}" for index in rng.choice(10**6, count, replace=False)]
    return digests, rng.normal(size=(count, size)).astype(np.float32)


def test_finished_runs_are_read_and_duplicates_dropped(tmp_path):
    digests, vectors = digests_and_vectors(10)
    write_shard_run(str(tmp_path), "20260101T000000Z-a", digests[:6], vectors[:6])
    # A bundle Beam retried, and an image seen again in a later run: same hash, same vector.
    write_shard_run(str(tmp_path), "20260102T000000Z-b", digests[4:], vectors[4:], shards=3)
    sharded = load_sharded(str(tmp_path), 4)
    assert len(sharded) == 10
    for digest, vector in zip(digests, vectors):
        np.testing.assert_array_equal(sharded.get(digest), vector)
    assert sharded.get("f" * 64) is None


def test_a_run_without_its_marker_is_never_read(tmp_path):
    digests, vectors = digests_and_vectors(4)
    write_shard_run(str(tmp_path), "run-killed", digests, vectors, finished=False)
    assert len(load_sharded(str(tmp_path), 4)) == 0
    assert cached_digests(str(tmp_path)) == set()


def test_a_run_of_another_vector_size_is_left_out_with_a_warning(tmp_path, caplog):
    digests, vectors = digests_and_vectors(3, size=5)
    write_shard_run(str(tmp_path), "run-other", digests, vectors)
    with caplog.at_level(logging.WARNING):
        assert len(load_sharded(str(tmp_path), 4)) == 0
    assert "run-other is unreadable" in caplog.text and "size 5, not 4" in caplog.text


def test_a_corrupt_shard_leaves_its_run_out_with_a_warning(tmp_path, caplog):
    digests, vectors = digests_and_vectors(6)
    good = write_shard_run(str(tmp_path), "run-1", digests[:3], vectors[:3])
    bad = write_shard_run(str(tmp_path), "run-2", digests[3:], vectors[3:])
    shard = Path(bad) / "vectors-00000-of-00002.tfrecord"
    shard.write_bytes(shard.read_bytes()[:-7])  # truncated, as by a full disk
    with caplog.at_level(logging.WARNING):
        sharded = load_sharded(str(tmp_path), 4)
    assert sorted(sharded.rows) == sorted(digests[:3]), good
    assert "run-2 is unreadable" in caplog.text


def test_cached_digests_lists_shards_and_npy_entries(tmp_path, tiny_extractor):
    paths = sorted(make_color_image_dir(tmp_path / "images", per_class=2).rglob("*.png"))
    compute_bottlenecks(paths[:3], tiny_extractor, tmp_path / "cache")
    namespace = os.fspath(BottleneckCache(tmp_path / "cache", tiny_extractor.spec).directory)
    digests, vectors = digests_and_vectors(2, size=16)
    write_shard_run(namespace, "run-1", digests, vectors)
    assert cached_digests(namespace) == {file_digest(path) for path in paths[:3]} | set(digests)


def test_compute_bottlenecks_reuses_shard_vectors_like_npy_entries(tmp_path, tiny_extractor):
    paths = sorted(make_color_image_dir(tmp_path / "images", per_class=4).rglob("*.png"))
    reference = compute_bottlenecks(paths, tiny_extractor, tmp_path / "npy-cache")
    # Half the images in a shard run, the other half as .npy entries.
    cache = BottleneckCache(tmp_path / "mixed-cache", tiny_extractor.spec)
    half = len(paths) // 2
    write_shard_run(os.fspath(cache.directory), "run-1",
                    [file_digest(path) for path in paths[:half]], reference.vectors[:half])
    for path, vector in zip(paths[half:], reference.vectors[half:]):
        cache.store(file_digest(path), vector)
    mixed = compute_bottlenecks(paths, tiny_extractor, tmp_path / "mixed-cache")
    assert (mixed.computed, mixed.reused) == (0, len(paths))
    np.testing.assert_array_equal(mixed.vectors, reference.vectors)


@pytest.mark.parametrize("relpath, picked", [
    ("roses/a.jpg", True), ("roses/deep/er/a.PNG", True), ("a.jpg", False),
    ("roses/.a.jpg", False), ("roses/._a.jpg", False), (".hidden/a.jpg", False),
    ("roses/__MACOSX/a.jpg", False), ("roses/a.txt", False), ("roses//a.jpg", False),
])
def test_discovery_rule_for_listed_paths(relpath, picked):
    from retrainer.data.names import is_image_relpath

    assert is_image_relpath(relpath) is picked


def test_corrupt_vector_bytes_fail_the_crc_and_leave_the_run_out(tmp_path, caplog):
    digests, vectors = digests_and_vectors(4)
    run = write_shard_run(str(tmp_path), "run-1", digests, vectors)
    shard = Path(run) / "vectors-00001-of-00002.tfrecord"
    data = bytearray(shard.read_bytes())
    data[-20] ^= 0x01  # one bit of the last vector: still a finite float32, only the CRC tells
    shard.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        assert len(load_sharded(str(tmp_path), 4)) == 0
    assert "run-1 is unreadable" in caplog.text and "CRC" in caplog.text


def test_records_of_another_layout_are_read_record_by_record(tmp_path):
    """The fast reader needs equal-length records of one layout; others (e.g. a writer that put
    the fields in another order) are still read, by tf.data."""
    import tensorflow as tf

    digests, vectors = digests_and_vectors(5)
    run_dir = write_shard_run(str(tmp_path), "run-1", digests, vectors, shards=1)
    with tf.io.TFRecordWriter(os.path.join(run_dir, "vectors-00000-of-00001.tfrecord")) as writer:
        for digest, vector in zip(digests, vectors):
            example = tf.train.Example()
            example.features.feature["vector"].bytes_list.value.append(vector.tobytes())
            example.features.feature["sha256"].bytes_list.value.append(digest.encode())
            # A field the reader ignores, of varying length: records of unequal length.
            example.features.feature["note"].bytes_list.value.append(b"x" * len(digest.strip("0")))
            writer.write(example.SerializeToString())
    sharded = load_sharded(str(tmp_path), 4)
    for digest, vector in zip(digests, vectors):
        np.testing.assert_array_equal(sharded.get(digest), vector)


def test_non_finite_vectors_are_left_out_and_an_earlier_duplicate_wins(tmp_path, caplog):
    digests, vectors = digests_and_vectors(4)
    poisoned = vectors.copy()
    poisoned[1, 2] = np.nan
    write_shard_run(str(tmp_path), "20260101T000000Z-a", digests, poisoned, shards=1)
    write_shard_run(str(tmp_path), "20260102T000000Z-b", digests[:1], vectors[:1] + 1, shards=1)
    with caplog.at_level(logging.WARNING):
        sharded = load_sharded(str(tmp_path), 4)
    assert sorted(sharded.rows) == sorted(set(digests) - {digests[1]})
    np.testing.assert_array_equal(sharded.get(digests[0]), vectors[0])  # the first run's
    assert "1 non-finite vectors" in caplog.text


def _age(run_dir: str, seconds: float) -> None:
    import time

    for folder, _, files in os.walk(run_dir):
        for name in files:
            then = time.time() - seconds
            os.utime(os.path.join(folder, name), (then, then))


def test_only_abandoned_unfinished_runs_are_deleted(tmp_path):
    """An unfinished run is deleted when it started, and last changed, over 3 days ago: never a
    finished run, a recent one, one still being written, or a folder not named by a start time."""
    digests, vectors = digests_and_vectors(4)
    namespace, week = str(tmp_path), 7 * 24 * 3600
    runs = {
        "abandoned": write_shard_run(namespace, "20200101T000000Z-dead", digests, vectors,
                                     finished=False),
        "finished long ago": write_shard_run(namespace, "20200101T000000Z-done", digests, vectors),
        "started long ago, still writing": write_shard_run(
            namespace, "20200102T000000Z-busy", digests, vectors, finished=False),
        "started now": write_shard_run(namespace, f"{shards_run_id_now()}-new", digests, vectors,
                                       finished=False),
        "not a run id": write_shard_run(namespace, "my-backup", digests, vectors, finished=False),
    }
    for name in ("abandoned", "finished long ago", "started now", "not a run id"):
        _age(runs[name], week)
    assert remove_abandoned_runs(namespace) == [runs["abandoned"]]
    assert [name for name, run in runs.items() if os.path.isdir(run)] == list(runs)[1:]
    assert len(load_sharded(namespace, 4)) == 4  # the finished run is still read


def test_the_reader_deletes_abandoned_runs(tmp_path):
    digests, vectors = digests_and_vectors(2)
    run = write_shard_run(str(tmp_path), "20200101T000000Z-dead", digests, vectors, finished=False)
    _age(run, 4 * 24 * 3600)
    assert len(load_sharded(str(tmp_path), 4)) == 0
    assert not os.path.exists(run)


def shards_run_id_now() -> str:
    import time

    from retrainer.cache.shards import RUN_ID_TIME

    return time.strftime(RUN_ID_TIME, time.gmtime())
