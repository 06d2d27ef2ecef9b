"""The image files' digests (the cache keys), without re-reading files that have not changed.

Hashing every image on every run reads the whole dataset (277 MB for 70,000 small PNGs; far more
for photos). The file index remembers, per image, the SHA-256 of its bytes with the file's
identity as the kernel reports it: (device, inode, size, mtime, ctime). A later run takes the
digest from the index only when all five are unchanged, and hashes the file otherwise.

Why that cannot mistake a changed file for an unchanged one (docs/performance.md, "Warm reruns"):
- a file's content cannot change without its ctime changing: the kernel sets ctime to "now" on
  every write, truncate, rename or metadata change, and no system call sets it back (utime and
  `touch -d`, `cp -p`, `rsync -t`, `tar -x` restore mtime, never ctime);
- a file replaced by another (a copy, a rename over it, a new file after a delete) has a new
  ctime, and usually a new inode;
- ctime has a granularity (1 ns on ext4/XFS/Btrfs/tmpfs, up to 1-2 s elsewhere): a change within
  the same tick as the recorded ctime would go unseen. So a digest is recorded only if the file's
  ctime was at least `SETTLED_SECONDS` older than the clock when the file was read (git's "racily
  clean" rule); a younger file is hashed again next run, when it will have settled;
- only file systems that keep a real ctime are trusted (`TRUSTED_FILE_SYSTEMS`, read from
  /proc/self/mountinfo): FAT/exFAT keep none (Linux shows mtime as ctime there, so restoring mtime
  would restore "ctime" too), and FUSE/9p/network mounts of other kinds are not known to; their
  files, and files anywhere but on Linux, are always hashed.
What it cannot see: a file rewritten while the system clock was set back (or, on a network file
system, a server clock more than SETTLED_SECONDS behind this one), or bytes changed under the
file system (a raw block device write).

One index file per dataset folder, `<bottleneck_dir>/file-index-v1/<hash of the folder>.index`
(NumPy's .npy format)
(`cache.layout.file_index_path`): no path is stored, only device and inode numbers, sizes, times
and digests; runs on the same dataset replace it atomically (the last one wins, and any version
is correct, since every record carries its own identity).
"""

from __future__ import annotations

import io
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from retrainer.cache.layout import file_index_path
from retrainer.data.collection import IDENTITY
from retrainer.io.atomic import making_folder, write_bytes_atomically
from retrainer.io.storage import AnyPath, is_url

log = logging.getLogger(__name__)

# The ctime must be this much older than the clock when a file is read for its digest to be kept:
# more than any file system's ctime granularity this index trusts, and than clock drift.
SETTLED_SECONDS = 2.0
TRUSTED_FILE_SYSTEMS = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "zfs", "f2fs", "bcachefs",
    "jfs", "reiserfs", "nilfs2", "overlay", "nfs", "nfs4", "ceph", "lustre", "gpfs",
})
_IDENTITY_FIELDS: tuple[str, ...] = IDENTITY.names or ()
# a record: a file's identity and its digest ("S32" would drop 00 bytes); a join key: its file
_RECORD = np.dtype([*IDENTITY.descr, ("digest", "u1", (32,))])
_KEY = np.dtype([(name, IDENTITY[name]) for name in ("device", "inode")])


class FileIndex:
    """The digests a dataset's files had when last hashed (see the module docstring).

    `look_up(paths)` stats each file and gives the digests the index still vouches for (""
    elsewhere); the bottleneck stage hashes the rest as it reads them, then `update(digests)`
    records every digest it may (settled files on trusted file systems) and rewrites the index.
    """

    def __init__(self, bottleneck_dir: Optional[AnyPath], dataset: Optional[AnyPath | str],
                 clock: Callable[[], int] = time.time_ns,
                 file_systems: Optional[Mapping[int, str]] = None) -> None:
        """The index of `dataset` in `bottleneck_dir`; with either None (or a remote cache), an
        index that knows nothing and keeps nothing.

        Args:
            bottleneck_dir: the cache root.
            dataset: the dataset folder (its path names the index file).
            clock: the wall clock, ns (files are settled relative to it).
            file_systems: {st_dev: file system type}; None: this host's mounts
                (`mounted_file_systems`).
        """
        self.path = (None if bottleneck_dir is None or dataset is None or is_url(bottleneck_dir)
                     else Path(file_index_path(bottleneck_dir, os.fspath(dataset))))
        self._clock = clock
        self._file_systems = file_systems
        self._identities = np.zeros(0, IDENTITY)
        self._looked_up_at = 0
        self.known: list[str] = []

    def look_up(self, paths: Sequence[AnyPath | str],
                identities: Optional[np.ndarray] = None) -> list[str]:
        """Each file's digest where the index vouches for it, else "" (also remembered as
        `known`, and the files' identities for `update`).

        `identities`: IDENTITY [len(paths)] (`retrainer.data.discovery`), the files' (device,
        inode, size, mtime_ns, ctime_ns) when the caller already stat'ed them (discovery lists
        70,000 files in about a second; stat'ing them again here took half as long); None or 0
        rows: stat'ed here.
        """
        self._looked_up_at = self._clock()  # before any file is read for its digest
        if identities is None or len(identities) != len(paths):
            identities = _identities(paths)
        self._identities = identities
        self.known = [""] * len(paths)
        if self.path is None or not len(paths):
            return self.known
        rows = _read_index(self.path)
        if not len(rows):
            return self.known
        # Join on (device, inode): both sides sorted, each file's candidate record found by a
        # binary search (a dict of a million records took ~0.5 GB and seconds).
        order = np.lexsort((rows["inode"], rows["device"]))
        rows = rows[order]
        keys = _join_keys(rows)
        wanted = _join_keys(identities)
        found = np.minimum(np.searchsorted(keys, wanted), len(rows) - 1)
        matches = keys[found] == wanted
        for name in _IDENTITY_FIELDS:
            matches &= rows[name][found] == identities[name]
        matches &= self._trusted(identities["device"])
        for position in np.flatnonzero(matches).tolist():
            self.known[position] = rows["digest"][found[position]].tobytes().hex()
        return self.known

    def _trusted(self, devices: np.ndarray) -> np.ndarray:
        """bool [N]: whether each device's file system keeps a real ctime
        (TRUSTED_FILE_SYSTEMS); False for device 0 (a file not stat'ed)."""
        if self._file_systems is None:
            self._file_systems = mounted_file_systems()
        trusted = [device for device, kind in self._file_systems.items()
                   if kind in TRUSTED_FILE_SYSTEMS and device]
        return np.isin(devices, np.array(trusted, np.uint64))

    def update(self, digests: Sequence[str]) -> None:
        """Record `digests` (aligned with the paths looked up; "" = unreadable) and rewrite the
        index if any was not known: only files whose ctime had settled when they were looked
        up, on a trusted file system."""
        if self.path is None or list(digests) == self.known:
            return
        chosen = (np.fromiter((bool(digest) for digest in digests), bool, len(digests))
                  & self._trusted(self._identities["device"])
                  & settled(self._identities["ctime_ns"], self._looked_up_at))
        if not chosen.any():  # an earlier index vouches for nothing changed either
            return
        rows = np.zeros(int(chosen.sum()), _RECORD)
        for name in _IDENTITY_FIELDS:
            rows[name] = self._identities[name][chosen]
        rows["digest"] = np.frombuffer(
            b"".join(bytes.fromhex(digests[position]) for position in np.flatnonzero(chosen).tolist()),
            np.uint8).reshape(-1, 32)
        _write_index(self.path, rows)


def settled(ctime_ns: Any, read_at_ns: int) -> Any:
    """Whether a file stat'ed and then read at or after `read_at_ns` (wall clock) with that ctime
    may be indexed: its ctime is SETTLED_SECONDS older, so a later change cannot fall in the same
    ctime tick. Element-wise for an int64 array of ctimes."""
    return read_at_ns - ctime_ns > int(SETTLED_SECONDS * 1e9)


def _identities(paths: Sequence[AnyPath | str]) -> np.ndarray:
    """IDENTITY [N] of local files, symlinks followed; zeros (device 0: never trusted) for a
    URL or a file that cannot be stat'ed."""
    identities = np.zeros(len(paths), IDENTITY)
    for position, path in enumerate(paths):
        if is_url(path):
            continue
        try:
            status = os.stat(path)
        except OSError:
            continue
        identities[position] = (status.st_dev, status.st_ino, status.st_size,
                                status.st_mtime_ns, status.st_ctime_ns)
    return identities


def _join_keys(identities: np.ndarray) -> np.ndarray:
    """The (device, inode) of each row as one sortable value (structured, compared by field)."""
    keys = np.zeros(len(identities), _KEY)
    keys["device"], keys["inode"] = identities["device"], identities["inode"]
    return keys


def mounted_file_systems(mountinfo: str = "/proc/self/mountinfo") -> dict[int, str]:
    """{st_dev: file system type} of the mounts /proc lists; {} where there is no /proc."""
    if not sys.platform.startswith("linux"):
        return {}
    types = {}
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                fields, _, rest = line.partition(" - ")
                major, _, minor = fields.split()[2].partition(":")
                types[os.makedev(int(major), int(minor))] = rest.split()[0]
    except (OSError, ValueError, IndexError):
        return {}
    return types


def _read_index(path: Path) -> np.ndarray:
    """The index's records (_RECORD [M]); 0 rows if there is none or it is unreadable."""
    try:
        rows = np.load(path, allow_pickle=False)
        if rows.dtype != _RECORD:
            raise ValueError(f"unexpected record type {rows.dtype}")
    except FileNotFoundError:
        return np.zeros(0, _RECORD)
    except (OSError, ValueError, EOFError) as error:
        log.warning("File index %s is unreadable (%s); hashing every file again.", path, error)
        return np.zeros(0, _RECORD)
    return rows


def _write_index(path: Path, rows: np.ndarray) -> None:
    """Replace the index atomically; a cache that cannot be written only costs hashing again."""
    buffer = _npy_bytes(rows)
    try:
        making_folder(path, lambda: write_bytes_atomically(path, buffer))
    except OSError as error:
        log.warning("Cannot write the file index %s (%s); the files are hashed again next run.",
                    path, error.strerror or error)


def _npy_bytes(rows: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, rows, allow_pickle=False)
    return buffer.getvalue()
