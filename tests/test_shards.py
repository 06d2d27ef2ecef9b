"""Sharded bottleneck storage (retrainer/shards.py): finished runs only, duplicates dropped, and
`compute_bottlenecks` reading shards and `.npy` entries alike."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from retrainer.bottlenecks import BottleneckCache, compute_bottlenecks, file_digest
from retrainer.shards import cached_digests, load_sharded
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
    from retrainer.image_names import is_image_relpath

    assert is_image_relpath(relpath) is picked
