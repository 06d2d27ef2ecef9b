"""The file index: a warm rerun reads no unchanged file, and a changed file is never mistaken for
an unchanged one, whatever was done to it (docs/performance.md, "Warm reruns")."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrainer.cache import bottlenecks as bottlenecks_module
from retrainer.cache.bottlenecks import compute_bottlenecks
from retrainer.cache.file_index import (
    SETTLED_SECONDS,
    TRUSTED_FILE_SYSTEMS,
    FileIndex,
    mounted_file_systems,
    settled,
)
from retrainer.cache.layout import file_index_path
from tests.fixtures_data import make_color_image_dir

LATER = int(60e9)  # a clock this far ahead: every file's ctime has settled


def later_clock() -> int:
    return time.time_ns() + LATER


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def indexed(cache: Path, folder: Path, paths: list[Path], clock=later_clock) -> list[str]:
    """One run's use of the index: look up, hash what it does not vouch for, record; returns the
    digests it vouched for ("" where it did not)."""
    index = FileIndex(cache, folder, clock=clock)
    known = index.look_up(paths)
    index.update([digest or sha256(path) for digest, path in zip(known, paths)])
    return known


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "data" / "a"
    folder.mkdir(parents=True)
    paths = []
    for index in range(4):
        paths.append(folder / f"{index}.bin")
        paths[-1].write_bytes(bytes([index]) * 100)
    return paths


@pytest.fixture(autouse=True)
def trusted_tmp(tmp_path: Path) -> None:
    kind = mounted_file_systems().get(os.stat(tmp_path).st_dev)
    if kind not in TRUSTED_FILE_SYSTEMS:
        pytest.skip(f"the temporary folder's file system ({kind}) keeps no trusted ctime")


def test_unchanged_files_are_vouched_for_on_the_next_run(tmp_path, files):
    assert indexed(tmp_path / "cache", tmp_path / "data", files) == [""] * 4
    assert indexed(tmp_path / "cache", tmp_path / "data", files) == [sha256(p) for p in files]


def test_same_size_edit_with_the_old_mtime_restored_is_seen(tmp_path, files):
    """`touch -d`/utime puts mtime back, never ctime."""
    indexed(tmp_path / "cache", tmp_path / "data", files)
    before = files[1].stat()
    files[1].write_bytes(b"\xff" * 100)  # same size
    os.utime(files[1], ns=(before.st_atime_ns, before.st_mtime_ns))
    assert files[1].stat().st_mtime_ns == before.st_mtime_ns
    known = indexed(tmp_path / "cache", tmp_path / "data", files)
    assert known[1] == "" and known[0] == sha256(files[0])


def test_copies_with_preserved_times_over_a_file_are_seen(tmp_path, files):
    """`cp -p` onto the file (same inode, truncated and rewritten) and a copy renamed over it
    (`rsync -t`: a new inode), both carrying the old file's mtime."""
    indexed(tmp_path / "cache", tmp_path / "data", files)
    source = tmp_path / "source.bin"
    source.write_bytes(b"\x07" * 100)
    os.utime(source, ns=(files[2].stat().st_atime_ns, files[2].stat().st_mtime_ns))
    shutil.copy2(source, files[2])  # in place
    staged = tmp_path / "data" / "a" / ".staged"
    shutil.copy2(source, staged)
    os.utime(staged, ns=(files[3].stat().st_atime_ns, files[3].stat().st_mtime_ns))
    os.replace(staged, files[3])
    known = indexed(tmp_path / "cache", tmp_path / "data", files)
    assert known[2:] == ["", ""]
    assert indexed(tmp_path / "cache", tmp_path / "data", files)[2:] == [sha256(files[2])] * 2


def test_a_file_deleted_and_recreated_is_seen_even_on_a_reused_inode(tmp_path, files):
    indexed(tmp_path / "cache", tmp_path / "data", files)
    stat = files[0].stat()
    files[0].unlink()
    files[0].write_bytes(b"\x09" * 100)
    os.utime(files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert indexed(tmp_path / "cache", tmp_path / "data", files)[0] == ""


def test_a_file_too_young_is_not_recorded(tmp_path, files):
    """Git's "racily clean" rule: a file whose ctime is within SETTLED_SECONDS of the clock when
    it was read could change again within the same ctime tick, so it is hashed next time too."""
    now = time.time_ns
    assert indexed(tmp_path / "cache", tmp_path / "data", files, clock=now) == [""] * 4
    assert indexed(tmp_path / "cache", tmp_path / "data", files, clock=now) == [""] * 4
    assert settled(0, int(SETTLED_SECONDS * 1e9) + 1)
    assert not settled(0, int(SETTLED_SECONDS * 1e9))
    assert not settled(int(5e9), int(4e9))  # a ctime in the future (clock set back)


def test_untrusted_file_systems_are_always_hashed(tmp_path, files):
    """FAT and exFAT keep no ctime (Linux shows mtime as ctime there)."""
    device = files[0].stat().st_dev
    for kind in ("vfat", "exfat", "fuseblk", "9p", None):
        systems = {} if kind is None else {device: kind}
        for _ in range(2):
            index = FileIndex(tmp_path / "cache", tmp_path / "data", later_clock, systems)
            assert index.look_up(files) == [""] * 4
            index.update([sha256(path) for path in files])
        assert not Path(file_index_path(tmp_path / "cache", str(tmp_path / "data"))).exists()


def test_mount_table_is_read_from_proc(tmp_path):
    table = tmp_path / "mountinfo"
    table.write_text(
        "36 35 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "40 36 8:17 / /media/card rw,nosuid - vfat /dev/sdb1 rw,fmask=0022\n"
        "41 36 0:52 / /mnt/share rw - nfs4 server:/x rw\n"
        "garbage\n")
    assert mounted_file_systems(str(table)) == {}  # one bad line: trust nothing
    table.write_text(table.read_text().replace("garbage\n", ""))
    assert mounted_file_systems(str(table)) == {os.makedev(8, 1): "ext4",
                                               os.makedev(8, 17): "vfat",
                                               os.makedev(0, 52): "nfs4"}


def test_digests_ending_in_zero_bytes_survive_the_index(tmp_path):
    """A record field of NumPy's "S32" type would drop a digest's trailing 00 bytes."""
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "z.bin"
    for counter in range(10_000):
        data = counter.to_bytes(4, "little")
        if hashlib.sha256(data).digest().endswith(b"\x00"):
            path.write_bytes(data)
            break
    indexed(tmp_path / "cache", folder, [path])
    assert indexed(tmp_path / "cache", folder, [path]) == [sha256(path)]


def test_a_damaged_index_is_ignored_with_a_warning(tmp_path, files, caplog):
    indexed(tmp_path / "cache", tmp_path / "data", files)
    index_file = Path(file_index_path(tmp_path / "cache", str(tmp_path / "data")))
    index_file.write_bytes(index_file.read_bytes()[:-7])
    with caplog.at_level(logging.WARNING):
        assert indexed(tmp_path / "cache", tmp_path / "data", files) == [""] * 4
    assert "File index" in caplog.text and "hashing every file again" in caplog.text
    assert indexed(tmp_path / "cache", tmp_path / "data", files) == [sha256(p) for p in files]


def test_the_index_holds_no_path(tmp_path, files):
    indexed(tmp_path / "cache", tmp_path / "data", files)
    index_file = Path(file_index_path(tmp_path / "cache", str(tmp_path / "data")))
    data = index_file.read_bytes()
    assert b"data" not in data and b".bin" not in data
    # exactly the records earlier versions wrote (they are read only with this dtype)
    assert np.load(index_file).dtype == np.dtype([
        ("device", "<u8"), ("inode", "<u8"), ("size", "<i8"), ("mtime_ns", "<i8"),
        ("ctime_ns", "<i8"), ("digest", "u1", (32,))])


_OPERATIONS = st.lists(st.tuples(
    st.sampled_from(["rewrite same size", "rewrite", "restore mtime", "copy over", "rename over",
                     "touch", "delete and recreate", "nothing"]),
    st.integers(0, 2), st.binary(min_size=1, max_size=3)), min_size=1, max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=_OPERATIONS)
def test_whatever_is_done_to_the_files_a_vouched_digest_is_the_content_s(tmp_path, operations):
    """Property: after any sequence of edits, copies, renames and time changes, every digest the
    index vouches for is the SHA-256 of the file's current bytes."""
    folder = tmp_path / f"run{time.monotonic_ns()}"
    folder.mkdir()
    paths = [folder / f"{index}.bin" for index in range(3)]
    for path in paths:
        path.write_bytes(b"start")
    cache = folder / "cache"
    indexed(cache, folder, paths)
    for operation, which, payload in operations:
        path = paths[which]
        before = path.stat()
        if operation == "rewrite same size":
            path.write_bytes((payload * 5)[:before.st_size].ljust(before.st_size, b"\x01"))
        elif operation == "rewrite":
            path.write_bytes(payload)
        elif operation == "restore mtime":
            path.write_bytes(payload)
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        elif operation in ("copy over", "rename over"):
            other = paths[(which + 1) % 3]
            if operation == "copy over":
                shutil.copy2(other, path)
            else:
                staged = folder / "staged"
                shutil.copy2(other, staged)
                os.utime(staged, ns=(before.st_atime_ns, before.st_mtime_ns))
                os.replace(staged, path)
        elif operation == "touch":
            os.utime(path)
        elif operation == "delete and recreate":
            path.unlink()
            path.write_bytes(payload)
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        known = indexed(cache, folder, paths)
        assert all(not digest or digest == sha256(path) for digest, path in zip(known, paths))


def test_a_warm_rerun_reads_no_unchanged_image_and_sees_an_edit(tmp_path, tiny_extractor,
                                                               monkeypatch):
    """The bottleneck stage with a file index: unchanged files are not read; an image edited
    with its mtime put back gets a new vector."""
    root = make_color_image_dir(tmp_path / "images", per_class=4)
    paths = sorted(root.rglob("*.png"))
    cache = tmp_path / "cache"

    def run():
        index = FileIndex(cache, root, clock=later_clock)
        index.look_up(paths)
        return compute_bottlenecks(paths, tiny_extractor, cache, file_index=index)

    first = run()
    reads: list[str] = []
    real_read_bytes = bottlenecks_module.read_bytes
    monkeypatch.setattr(bottlenecks_module, "read_bytes",
                        lambda path: reads.append(os.fspath(path)) or real_read_bytes(path))
    second = run()
    assert reads == [] and (second.computed, second.reused) == (0, len(paths))
    np.testing.assert_array_equal(second.vectors, first.vectors)

    edited = paths[3]
    stat = edited.stat()
    shutil.copy2(paths[-1], edited)  # another class's image, then the old times back
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    third = run()
    assert reads == [os.fspath(edited)]
    assert (third.computed, third.reused) == (0, len(paths))  # its new content is cached
    np.testing.assert_array_equal(third.vectors[3], first.vectors[-1])
    assert third.digests[3] == sha256(edited) != first.digests[3]



def test_discovery_lists_the_identities_the_index_would_stat(tmp_path):
    """Discovery's stat of each image is the file index's identity: the index need not stat the
    files again, and an edit after the listing is seen by the next run."""
    from retrainer.data.discovery import discover_images

    folder = make_color_image_dir(tmp_path / "images", per_class=3)
    collection = discover_images(folder)
    paths = [image.path for image in collection.images]
    identities = collection.file_identities
    for path, identity in zip(paths, identities.tolist()):
        status = os.stat(path)
        assert identity == (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns,
                            status.st_ctime_ns)
    cache = tmp_path / "cache"
    for expected in ([""] * len(paths), [sha256(path) for path in paths]):
        index = FileIndex(cache, folder, clock=later_clock)
        assert index.look_up(paths, identities) == expected
        index.update([sha256(path) for path in paths])
    paths[0].write_bytes(paths[1].read_bytes())
    collection = discover_images(folder)
    index = FileIndex(cache, folder, clock=later_clock)
    known = index.look_up(paths, collection.file_identities)
    assert known[0] == "" and known[1:] == [sha256(path) for path in paths[1:]]


_FIELDS = ("device", "inode", "size", "mtime_ns", "ctime_ns")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.lists(st.tuples(st.sampled_from([1, 2, 2**63 + 5]), st.integers(0, 2**64 - 1),
                                st.integers(0, 40), st.booleans(), st.booleans()),
                      min_size=0, max_size=30, unique_by=lambda file: file[:2]),
       changed=st.lists(st.tuples(st.integers(0, 29), st.sampled_from(_FIELDS[2:])),
                        max_size=10))
def test_the_index_vouches_for_exactly_the_unchanged_settled_files_of_trusted_devices(
        tmp_path, files, changed):
    """Property (the array join of look_up against the rule file by file): a digest comes back
    exactly for a file whose five identity fields all equal its record's, whose ctime had
    settled when it was recorded, on a trusted file system; inodes up to 2^64 - 1 and devices
    above 2^63 included, files with the same inode on another device kept apart."""
    from retrainer.data.collection import IDENTITY

    folder = tmp_path / f"run{time.monotonic_ns()}"
    systems = {1: "ext4", 2: "vfat", 2**63 + 5: "xfs"}
    now = int(1e18)
    identities = np.zeros(len(files), IDENTITY)
    for row, (device, inode, size, young, _) in enumerate(files):
        ctime = now - (1 if young else LATER)
        identities[row] = (device, inode, size, ctime - 7, ctime)
    digests = [hashlib.sha256(bytes(row)).hexdigest() if not unreadable else ""
               for row, (*_, unreadable) in enumerate(files)]
    paths = [f"/nowhere/{row}" for row in range(len(files))]
    first = FileIndex(folder, folder, lambda: now, systems)
    assert first.look_up(paths, identities) == [""] * len(files)
    first.update(digests)
    later = identities.copy()
    for row, name in changed:
        if row < len(later):
            later[name][row] += 1
    expected = [digests[row] if (systems[device] in TRUSTED_FILE_SYSTEMS and not young
                                 and digests[row] and later[row] == identities[row]) else ""
                for row, (device, _, _, young, _) in enumerate(files)]
    assert FileIndex(folder, folder, lambda: now + LATER, systems).look_up(paths, later) == expected
