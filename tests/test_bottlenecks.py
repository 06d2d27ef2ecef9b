"""Bottleneck cache and extraction: computed once, reused, never stale, resumable, shared safely."""

from __future__ import annotations

import dataclasses
import errno
import io
import logging
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from retrainer.cache import bottlenecks as bottlenecks_module
from retrainer.cache import layout as layout_module
from retrainer.cache.bottlenecks import compute_bottlenecks
from retrainer.cache.entries import BottleneckCache
from retrainer.data import batches as batches_module
from retrainer.data.batches import file_digest
from retrainer.data.decoding import load_image
from tests.fixtures_data import make_color_image_dir
from tests.fixtures_faults import own_file, read_entry
from tests.fixtures_pipeline import interrupt_cache_writes_after


@pytest.fixture
def image_paths(tmp_path: Path) -> list[Path]:
    """3 classes x 8 generated PNGs."""
    root = make_color_image_dir(tmp_path / "images", per_class=8)
    return sorted(root.rglob("*.png"))


def expected_vectors(extractor, paths) -> np.ndarray:
    """What the extractor gives for the decoded pixels, computed directly."""
    pixels = np.stack([load_image(path, extractor.spec.input_size) for path in paths])
    return extractor(tf.constant(pixels, tf.float32) / 255.0).numpy()


def cache_entries(root: Path) -> list[Path]:
    return sorted(root.rglob("*.npy"))


def test_vectors_are_the_extractors_and_reused_on_the_next_run(tmp_path, image_paths, tiny_extractor):
    first = compute_bottlenecks(image_paths, tiny_extractor, tmp_path / "cache", batch_size=5)
    assert (first.computed, first.reused, first.skipped) == (len(image_paths), 0, ())
    assert first.ok.all()
    np.testing.assert_allclose(first.vectors, expected_vectors(tiny_extractor, image_paths),
                               rtol=1e-5, atol=1e-6)

    second = compute_bottlenecks(image_paths, tiny_extractor, tmp_path / "cache")
    assert (second.computed, second.reused) == (0, len(image_paths))
    np.testing.assert_array_equal(second.vectors, first.vectors)


def test_files_are_read_and_hashed_alike_on_this_thread_and_on_threads(tmp_path, monkeypatch):
    """Small files are read on the calling thread, the rest on threads from the first large
    one: the same bytes, digests and reasons, in order, either way."""
    sizes = [10, 300, bottlenecks_module.SERIAL_BYTES, 20, 5, 70_000, 1, 0]
    paths = []
    for index, size in enumerate(sizes):
        path = tmp_path / f"{index}.bin"
        path.write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
        paths.append(str(path))
    paths.insert(3, str(tmp_path / "missing.png"))
    expected = []
    for path in paths:
        if os.path.exists(path):
            data = Path(path).read_bytes()
            expected.append((data, file_digest(path), ""))
        else:
            expected.append((b"", "", "cannot read file (No such file or directory)"))
    assert list(bottlenecks_module._read_and_hashed(paths)) == expected
    monkeypatch.setattr(bottlenecks_module, "SERIAL_BYTES", 1 << 30)  # all on this thread
    assert list(bottlenecks_module._read_and_hashed(paths)) == expected
    monkeypatch.setattr(bottlenecks_module, "SERIAL_BYTES", 0)  # threads after the first
    assert list(bottlenecks_module._read_and_hashed(paths)) == expected


def test_cache_layout_is_content_addressed_per_extractor(tmp_path, image_paths, tiny_extractor):
    compute_bottlenecks(image_paths, tiny_extractor, tmp_path / "cache")
    digest = file_digest(image_paths[0])
    entry = tmp_path / "cache" / "tiny_test-v1" / "v1-32x32" / digest[:2] / f"{digest}.npy"
    assert entry.is_file()
    vector = read_entry(entry)
    assert vector.dtype == np.float32 and vector.shape == (16,)
    relative = [str(path.relative_to(tmp_path / "cache")) for path in cache_entries(tmp_path / "cache")]
    assert len(relative) == len(image_paths)
    assert not any(name in entry for entry in relative for name in ("red", "green", "blue", "png"))


def test_renamed_image_reuses_its_vector(tmp_path, image_paths, tiny_extractor):
    compute_bottlenecks(image_paths, tiny_extractor, tmp_path / "cache")
    renamed = image_paths[0].with_name("renamed.png")
    image_paths[0].rename(renamed)
    result = compute_bottlenecks([renamed], tiny_extractor, tmp_path / "cache")
    assert (result.computed, result.reused) == (0, 1)


def test_edited_image_is_recomputed_never_served_stale(tmp_path, image_paths, tiny_extractor):
    before = compute_bottlenecks(image_paths, tiny_extractor, tmp_path / "cache")
    edited = image_paths[3]
    Image.new("RGB", (32, 32), (255, 255, 0)).save(edited)

    after = compute_bottlenecks(image_paths, tiny_extractor, tmp_path / "cache")
    assert (after.computed, after.reused) == (1, len(image_paths) - 1)
    np.testing.assert_allclose(after.vectors[3], expected_vectors(tiny_extractor, [edited])[0],
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(after.vectors[3], before.vectors[3])


def test_another_extractor_never_reuses_these_vectors(tmp_path, image_paths, tiny_extractor):
    compute_bottlenecks(image_paths, tiny_extractor, tmp_path / "cache")
    other = type(tiny_extractor)()
    other.spec = dataclasses.replace(other.spec, id="tiny_test-v2")
    other.kernel.assign(-other.kernel)

    result = compute_bottlenecks(image_paths, other, tmp_path / "cache")
    assert (result.computed, result.reused) == (len(image_paths), 0)
    np.testing.assert_allclose(result.vectors, expected_vectors(other, image_paths),
                               rtol=1e-5, atol=1e-6)
    assert sorted(path.name for path in (tmp_path / "cache").iterdir()) == ["tiny_test-v1", "tiny_test-v2"]


@pytest.mark.parametrize(
    "corruption",
    [
        b"",
        b"\x93NUMPY garbage",
        "truncated",
        "wrong_shape",
        "wrong_dtype",
        "not_finite",
        "pickled_object",
    ],
)
def test_corrupt_entry_is_recomputed_with_a_warning(tmp_path, image_paths, tiny_extractor, caplog,
                                                     corruption):
    good = compute_bottlenecks(image_paths, tiny_extractor, tmp_path / "cache")
    cache = BottleneckCache(tmp_path / "cache", tiny_extractor.spec)
    entry = own_file(cache.path(file_digest(image_paths[2])))
    if isinstance(corruption, bytes):
        entry.write_bytes(corruption)
    elif corruption == "truncated":
        entry.write_bytes(entry.read_bytes()[:-10])
    elif corruption == "pickled_object":
        np.save(entry, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    else:
        bad = {"wrong_shape": np.zeros(7, np.float32), "wrong_dtype": np.zeros(16, np.float64),
               "not_finite": np.full(16, np.nan, np.float32)}[corruption]
        np.save(entry, bad)

    with caplog.at_level(logging.WARNING, logger="retrainer.cache.bottlenecks"):
        result = compute_bottlenecks(image_paths, tiny_extractor, tmp_path / "cache")
    assert (result.computed, result.reused) == (1, len(image_paths) - 1)
    # Recomputed alone, not in a batch of 24: equal up to float rounding.
    np.testing.assert_allclose(result.vectors, good.vectors, rtol=1e-5, atol=1e-6)
    assert any(str(entry) in message and "recomputing" in message for message in caplog.messages)
    np.testing.assert_array_equal(read_entry(entry), result.vectors[2])


def test_a_batch_shares_one_pack_file_and_damage_to_it_redoes_that_batch(tmp_path, image_paths,
                                                                         tiny_extractor, caplog):
    """One file created per batch (hard links), not per image; a damaged pack costs its batch."""
    good = compute_bottlenecks(image_paths, tiny_extractor, tmp_path / "cache", batch_size=4)
    cache = BottleneckCache(tmp_path / "cache", tiny_extractor.spec)
    entries = [cache.path(digest) for digest in good.digests]
    for start in range(0, len(entries), 4):
        batch = [entry.stat() for entry in entries[start:start + 4]]
        assert len({status.st_ino for status in batch}) == 1
        assert batch[0].st_nlink == len(batch)
    assert len({entry.stat().st_ino for entry in entries}) == -(-len(entries) // 4)
    for entry, vector in zip(entries, good.vectors):
        pack = np.load(entry, allow_pickle=False)
        assert pack.dtype.names == ("key", "vector") and entry.stem in pack["key"].astype(str)
        np.testing.assert_array_equal(read_entry(entry), vector)

    entries[5].write_bytes(entries[5].read_bytes()[:-10])  # damages entries 4-7 alike
    with caplog.at_level(logging.WARNING, logger="retrainer.cache.bottlenecks"):
        result = compute_bottlenecks(image_paths, tiny_extractor, tmp_path / "cache")
    assert (result.computed, result.reused) == (4, len(image_paths) - 4)
    assert sum("recomputing" in message for message in caplog.messages) == 4
    np.testing.assert_allclose(result.vectors, good.vectors, rtol=1e-5, atol=1e-6)
    again = compute_bottlenecks(image_paths, tiny_extractor, tmp_path / "cache")
    assert (again.computed, again.reused) == (0, len(image_paths))


def test_a_non_finite_row_of_a_pack_redoes_that_entry_alone(tmp_path, image_paths, tiny_extractor,
                                                            caplog):
    """Packs are checked a whole block at a time: one bad row costs its own entry only."""
    good = compute_bottlenecks(image_paths, tiny_extractor, tmp_path / "cache", batch_size=4)
    entry = BottleneckCache(tmp_path / "cache", tiny_extractor.spec).path(good.digests[5])
    pack = np.load(entry, allow_pickle=False)
    pack["vector"][pack["key"].astype(str).tolist().index(entry.stem)] = np.inf
    buffer = io.BytesIO()
    np.save(buffer, pack, allow_pickle=False)
    with open(entry, "r+b") as stream:  # in place: every link of the pack sees it
        stream.write(buffer.getvalue())
    with caplog.at_level(logging.WARNING, logger="retrainer.cache.bottlenecks"):
        result = compute_bottlenecks(image_paths, tiny_extractor, tmp_path / "cache")
    assert (result.computed, result.reused) == (1, len(image_paths) - 1)
    assert [message for message in caplog.messages if "recomputing" in message] == [
        message for message in caplog.messages if str(entry) in message]
    assert sum("recomputing" in message for message in caplog.messages) == 1
    np.testing.assert_allclose(result.vectors, good.vectors, rtol=1e-5, atol=1e-6)


def test_byte_copies_in_one_batch_leave_no_temporary_file(tmp_path, image_paths, tiny_extractor):
    """Two names for one digest in a batch: linking the pack twice under one entry name must not
    leave the spare link behind (renaming a link over its twin does nothing)."""
    copy = image_paths[0].parent / "copy.png"
    copy.write_bytes(image_paths[0].read_bytes())
    result = compute_bottlenecks([image_paths[0], copy, *image_paths[1:4]], tiny_extractor,
                                 tmp_path / "cache")
    assert result.ok.all()
    np.testing.assert_allclose(result.vectors[0], result.vectors[1], rtol=1e-5, atol=1e-6)
    assert [path.name for path in (tmp_path / "cache").rglob(".*")] == []


def test_undecodable_images_are_skipped_with_a_warning_naming_them(tmp_path, image_paths,
                                                                   tiny_extractor, caplog):
    text = image_paths[0].parent / "notes.png"
    text.write_bytes(b"not a picture\n")
    empty = image_paths[0].parent / "empty.png"
    empty.write_bytes(b"")
    paths = [text, *image_paths, empty]
    with caplog.at_level(logging.WARNING, logger="retrainer.cache.bottlenecks"):
        result = compute_bottlenecks(paths, tiny_extractor, tmp_path / "cache")
    assert [position for position, _ in result.skipped] == [0, len(paths) - 1]
    assert "text file" in result.skipped[0][1] and "empty" in result.skipped[1][1]
    assert result.ok.tolist() == [False] + [True] * len(image_paths) + [False]
    assert not result.vectors[0].any()
    assert result.computed == len(image_paths)
    assert any(str(text) in message for message in caplog.messages)
    assert any(str(empty) in message for message in caplog.messages)
    assert len(cache_entries(tmp_path / "cache")) == len(image_paths)


@pytest.mark.parametrize("kept_bytes", [64 << 20, 0, "half"])
def test_each_missing_file_is_read_once_while_its_bytes_are_kept(tmp_path, image_paths,
                                                                 tiny_extractor, monkeypatch,
                                                                 kept_bytes):
    """The cache lookup's bytes feed the decoder (up to KEPT_BYTES); the rest are read again."""
    sizes = [path.stat().st_size for path in image_paths]
    limit = sum(sizes[:len(sizes) // 2]) if kept_bytes == "half" else kept_bytes
    monkeypatch.setattr(bottlenecks_module, "KEPT_BYTES", limit)
    reads: dict[str, int] = {}
    real_read_bytes = bottlenecks_module.read_bytes

    def counted(path):
        reads[os.fspath(path)] = reads.get(os.fspath(path), 0) + 1
        return real_read_bytes(path)

    monkeypatch.setattr(bottlenecks_module, "read_bytes", counted)  # the cache lookup's read
    monkeypatch.setattr(batches_module, "read_bytes", counted)  # the decoder's, for the rest
    result = compute_bottlenecks(image_paths, tiny_extractor, tmp_path / "cache", batch_size=5)
    kept = [sum(sizes[:index + 1]) <= limit for index in range(len(sizes))]
    assert [reads[os.fspath(path)] for path in image_paths] == [1 if keep else 2 for keep in kept]
    assert result.computed == len(image_paths)
    np.testing.assert_allclose(result.vectors, expected_vectors(tiny_extractor, image_paths),
                               rtol=1e-5, atol=1e-6)


def test_interrupted_extraction_resumes_with_only_the_missing_vectors(tmp_path, image_paths,
                                                                      tiny_extractor, monkeypatch):
    """Ctrl-C in the middle of writing: whole entries stay, the rerun computes only the rest."""
    interrupt_cache_writes_after(monkeypatch, 7)
    with pytest.raises(KeyboardInterrupt):
        compute_bottlenecks(image_paths, tiny_extractor, tmp_path / "cache", batch_size=4)
    monkeypatch.undo()
    kept = len(cache_entries(tmp_path / "cache"))
    assert 7 <= kept < len(image_paths)

    resumed = compute_bottlenecks(image_paths, tiny_extractor, tmp_path / "cache")
    assert (resumed.computed, resumed.reused) == (len(image_paths) - kept, kept)
    np.testing.assert_allclose(resumed.vectors, expected_vectors(tiny_extractor, image_paths),
                               rtol=1e-5, atol=1e-6)


def test_deleted_entries_and_stray_temp_files(tmp_path, image_paths, tiny_extractor):
    """A run killed mid-write leaves at most a temp file: ignored, and only lost entries redone."""
    compute_bottlenecks(image_paths, tiny_extractor, tmp_path / "cache")
    entries = cache_entries(tmp_path / "cache")
    for entry in entries[::3]:
        entry.unlink()
    (entries[1].parent / f".{entries[1].stem}.abc.tmp").write_bytes(b"\x93NUMPY half")
    result = compute_bottlenecks(image_paths, tiny_extractor, tmp_path / "cache")
    assert result.computed == len(entries[::3])
    assert result.reused == len(image_paths) - len(entries[::3])


def test_two_runs_sharing_a_cache_at_the_same_time(tmp_path, image_paths, tiny_extractor):
    results, errors = [], []

    def extract() -> None:
        try:
            results.append(compute_bottlenecks(image_paths, type(tiny_extractor)(),
                                               tmp_path / "cache", batch_size=2, show_progress=False))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=extract) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert all(result.ok.all() for result in results)
    np.testing.assert_array_equal(results[0].vectors, results[1].vectors)
    assert len(cache_entries(tmp_path / "cache")) == len(image_paths)
    assert not [path for path in (tmp_path / "cache").rglob("*") if path.name.endswith(".tmp")]
    again = compute_bottlenecks(image_paths, tiny_extractor, tmp_path / "cache")
    assert again.computed == 0


def test_unusual_file_names(tmp_path, tiny_extractor):
    folder = tmp_path / "naïve class"
    folder.mkdir()
    paths = []
    for index, name in enumerate(["a b.png", "ünï 玫瑰.png", "x,y;z'.png"]):
        paths.append(folder / name)
        Image.new("RGB", (20, 20), (index * 80, 0, 0)).save(paths[-1])
    result = compute_bottlenecks(paths, tiny_extractor, tmp_path / "cache")
    assert result.ok.all() and result.computed == 3


def test_progress_bar_only_on_a_terminal(tmp_path, image_paths, tiny_extractor, capsys):
    compute_bottlenecks(image_paths, tiny_extractor, tmp_path / "cache")
    captured = capsys.readouterr()
    assert captured.out == "" and "img/s" not in captured.err  # not a TTY under pytest


def test_cache_format_version_is_part_of_the_key(tmp_path, image_paths, tiny_extractor, monkeypatch):
    compute_bottlenecks(image_paths, tiny_extractor, tmp_path / "cache")
    monkeypatch.setattr(layout_module, "CACHE_FORMAT", "v2")
    result = compute_bottlenecks(image_paths, tiny_extractor, tmp_path / "cache")
    assert result.computed == len(image_paths)


def test_without_hard_links_each_entry_is_a_plain_vector_file(tmp_path, image_paths, tiny_extractor,
                                                              monkeypatch):
    """A file system that cannot link (FAT, some network shares: EPERM) gets one file per entry."""
    def no_links(source, target, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted", source)

    monkeypatch.setattr(os, "link", no_links)
    first = compute_bottlenecks(image_paths, tiny_extractor, tmp_path / "cache", batch_size=4)
    monkeypatch.undo()
    entries = cache_entries(tmp_path / "cache")
    assert len(entries) == len(image_paths)
    assert all(entry.stat().st_nlink == 1 for entry in entries)
    assert not [path for path in (tmp_path / "cache").rglob("*") if path.name.endswith(".tmp")]
    for entry in entries:
        vector = np.load(entry, allow_pickle=False)
        assert vector.dtype == np.float32 and vector.shape == (16,)
    again = compute_bottlenecks(image_paths, tiny_extractor, tmp_path / "cache")
    assert (again.computed, again.reused) == (0, len(image_paths))
    np.testing.assert_array_equal(again.vectors, first.vectors)


def test_npy_reader_gives_what_np_load_gives_and_refuses_what_it_refuses():
    """The pack reader parses each distinct header once; its answers are np.load's."""
    from retrainer.cache._packs import load_npy, pack_bytes

    rng = np.random.default_rng(3)
    arrays = [np.load(io.BytesIO(pack_bytes([(f"{key:064x}", rng.random(8, np.float32))
                                             for key in range(3)]))),
              rng.random(16).astype(np.float32), np.asfortranarray(rng.random((3, 4))),
              np.zeros((0, 5), np.float32)]
    for array in arrays:
        buffer = io.BytesIO()
        np.save(buffer, array)
        for _ in range(2):  # the header parsed, then reused
            loaded = load_npy(buffer.getvalue())
            assert loaded.dtype == array.dtype and loaded.shape == array.shape
            np.testing.assert_array_equal(loaded, array)
        with pytest.raises(ValueError):
            load_npy(buffer.getvalue()[:-1] if array.size else b"\x93NUMPY")
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    for data in (pickled.getvalue(), b"garbage", b""):
        with pytest.raises(ValueError):
            load_npy(data)
