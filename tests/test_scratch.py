"""Rows in a scratch file (`io.scratch`): read and written like an array, whatever the access,
with the process's resident memory bounded whatever their size."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrainer.io import scratch as scratch_module
from retrainer.io.scratch import ScratchRows, scratch_or_memory

_ACCESS = st.one_of(
    st.tuples(st.just("slice"), st.integers(-70, 70), st.integers(-70, 70)),
    st.tuples(st.just("int"), st.integers(0, 59), st.integers(0, 0)),
    st.tuples(st.just("positions"), st.integers(0, 2**16), st.integers(0, 80)))


def _index(access: tuple[str, int, int], rows: int):
    kind, first, second = access
    if kind == "slice":
        return slice(first, second)
    if kind == "int":
        return first % rows
    return np.random.default_rng(first).integers(0, rows, second)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(accesses=st.lists(st.tuples(_ACCESS, st.booleans(), st.integers(0, 255)), max_size=25),
       resident_pages=st.sampled_from([1, 3, 1000]),
       shape=st.sampled_from([(60, 32, 32), (60, 5), (60,)]))
def test_scratch_rows_read_and_write_as_an_array_does(tmp_path, monkeypatch, accesses,
                                                      resident_pages, shape):
    """Property: any sequence of reads and writes (slices, ints, arrays of positions with
    repeats) gives what the same on an ndarray gives, however often its pages are dropped."""
    monkeypatch.setattr(scratch_module, "RESIDENT_BYTES", resident_pages * scratch_module.PAGE)
    rows = ScratchRows(shape, np.uint8, tmp_path)
    mirror = np.zeros(shape, np.uint8)
    for access, write, value in accesses:
        index = _index(access, shape[0])
        if write:
            if isinstance(index, np.ndarray):  # repeats: the last write wins in both
                index = np.unique(index)
            rows[index] = value
            mirror[index] = value
        else:
            found = rows[index]
            assert isinstance(found, np.ndarray) and found.dtype == np.uint8
            np.testing.assert_array_equal(found, mirror[index])
    np.testing.assert_array_equal(rows[:], mirror)
    positions = np.random.default_rng(len(accesses)).permutation(shape[0])[:17]
    taken = rows.take(positions, chunk=5)
    assert taken.shape == (17, *shape[1:]) and len(taken) == 17
    np.testing.assert_array_equal(taken[:], mirror[positions])
    assert list(tmp_path.iterdir()) == []


def _resident_file_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) * 1024
    return 0


def test_a_pass_over_256_mb_of_rows_keeps_about_resident_bytes_in_memory(tmp_path):
    """Writing then reading 256 MB of thumbnails-like rows, in chunks and gathered at random,
    raises the process's file-backed resident memory by about RESIDENT_BYTES, not 256 MB."""
    rows = ScratchRows((1 << 18, 32, 32), np.uint8, tmp_path)
    before = _resident_file_bytes()
    highest = before
    chunk = np.arange(4096 * 1024, dtype=np.uint32).astype(np.uint8).reshape(4096, 32, 32)
    for start in range(0, len(rows), 4096):
        rows[start:start + 4096] = chunk
        highest = max(highest, _resident_file_bytes())
    generator = np.random.default_rng(0)
    for _ in range(64):
        positions = generator.integers(0, len(rows), 4096)
        np.testing.assert_array_equal(rows[positions], chunk[positions % 4096])
        highest = max(highest, _resident_file_bytes())
    assert highest - before <= 2 * scratch_module.RESIDENT_BYTES


def test_without_a_usable_folder_the_rows_are_in_memory(tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_bytes(b"")
    rows = scratch_or_memory((3, 4), np.uint8, blocker / "below")
    assert isinstance(rows, np.ndarray) and not rows.any()
    assert isinstance(scratch_or_memory((3, 4), np.uint8, None), np.ndarray)
    assert isinstance(scratch_or_memory((3, 4), np.uint8, tmp_path / "new"), ScratchRows)
