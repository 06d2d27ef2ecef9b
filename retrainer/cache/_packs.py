"""Vector packs: the cache entries of one batch in one `.npy` file, each entry a hard link to it.

Creating a file costs a file system far more than linking one (0.8 ms against 25 us of CPU per
entry, measured on ext4: docs/performance.md), so the bottleneck stage writes each batch as one
pack and links it under every entry's name (`retrainer.io.atomic.write_linked_atomically`).

A pack is a standard `.npy` holding a structured array, one row per entry: ("key", the entry's
ASCII key), ("vector", float32 [D]). NumPy reads it without pickle. An entry name that holds a pack
gives the row whose key is its own; a plain float32 [D] `.npy` (written for an entry alone, in a
remote cache, or by an older retrainer) is the vector itself. An older retrainer finds a pack not a
[D] vector: it warns and recomputes that entry, as for any entry it cannot use.
"""

from __future__ import annotations

import collections
import io
import os
from typing import BinaryIO, Optional, Sequence

import numpy as np

PACK_FIELDS = ("key", "vector")
# Packs kept parsed by one reader: a batch's entries are looked up together, so few are needed.
_READER_CAPACITY = 64
_Identity = tuple[int, int, int, int]  # (device, inode, size, mtime) of a pack file
_NPY_MAGIC = b"\x93NUMPY"
_HEADER_CAPACITY = 256
# .npy header bytes -> (dtype, shape, Fortran order), as np.load parsed them
_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}


def pack_bytes(entries: Sequence[tuple[str, np.ndarray]]) -> bytes:
    """The `.npy` bytes of a pack of (key, float32 [D] vector) entries."""
    keys = [key.encode("ascii") for key, _ in entries]
    vectors = np.stack([np.asarray(vector, np.float32) for _, vector in entries])
    rows = np.empty(len(keys), [("key", f"S{max(map(len, keys))}"),
                                ("vector", "<f4", vectors.shape[1:])])
    rows["key"], rows["vector"] = keys, vectors
    buffer = io.BytesIO()
    np.save(buffer, rows, allow_pickle=False)
    return buffer.getvalue()


class PackReader:
    """Reads cache entries, parsing each pack once (entries of a pack are read together)."""

    def __init__(self) -> None:
        # (device, inode, size, mtime) of a pack -> its vectors by key
        self._packs: collections.OrderedDict[_Identity, dict[str, np.ndarray]] = \
            collections.OrderedDict()

    def read(self, stream: BinaryIO, key: str) -> np.ndarray:
        """The array an entry named `key` holds: its pack's row, or the plain `.npy` array.

        Raises:
            ValueError: not a `.npy`, or a pack without a row for `key`.
        """
        identity = _identity(stream)
        rows = self._packs.get(identity) if identity else None
        if rows is None:
            array = np.load(stream, allow_pickle=False)
            rows = pack_rows(array)
            if rows is None:
                return array
            if identity:
                self._packs[identity] = rows
                if len(self._packs) > _READER_CAPACITY:
                    self._packs.popitem(last=False)
        elif identity:
            self._packs.move_to_end(identity)
        try:
            return rows[key]
        except KeyError:
            raise ValueError(f"its pack of {len(rows)} entries has none for {key}") from None


def load_npy(data: bytes) -> np.ndarray:
    """`np.load` of a `.npy` file's bytes (never unpickling), each distinct header parsed once.

    Every pack of one batch size has the same header, and parsing it (`ast.literal_eval`) was
    three quarters of the cost of loading a pack: about 0.4 s of loading 70,000 vectors.

    Raises:
        ValueError: not a `.npy` file, an object array, or fewer bytes than its header says.
    """
    header_end = _header_end(data)
    parsed = _HEADERS.get(data[:header_end])
    if parsed is None:
        array = np.load(io.BytesIO(data), allow_pickle=False)  # checks everything once
        if len(_HEADERS) < _HEADER_CAPACITY:
            _HEADERS[data[:header_end]] = (array.dtype, array.shape,
                                           array.flags.f_contiguous and not array.flags.c_contiguous)
        return array
    dtype, shape, fortran = parsed
    count = int(np.prod(shape))
    if len(data) - header_end < count * dtype.itemsize:
        raise ValueError(f"{len(data)} bytes: shorter than its .npy header says")
    return np.frombuffer(data, dtype, count, header_end).reshape(shape, order="F" if fortran else "C")


def _header_end(data: bytes) -> int:
    """Where a `.npy` file's header ends (its data begins)."""
    if data[:6] != _NPY_MAGIC or len(data) < 10:
        raise ValueError("not a .npy file")
    if data[6] == 1:
        return 10 + int.from_bytes(data[8:10], "little")
    if len(data) < 12:
        raise ValueError("not a .npy file")
    return 12 + int.from_bytes(data[8:12], "little")


def pack_rows(array: np.ndarray) -> Optional[dict[str, np.ndarray]]:
    """{key: float32 [D] vector} of a pack read by np.load; None for a plain array."""
    table = pack_table(array)
    if table is None:
        return None
    rows, vectors = table
    return {key: vectors[row] for key, row in rows.items()}


def pack_table(array: np.ndarray) -> Optional[tuple[dict[str, int], np.ndarray]]:
    """({key: row}, float32 [n, D] vectors) of a pack read by np.load; None for a plain array."""
    if array.dtype.names != PACK_FIELDS:
        return None
    keys = array["key"].tolist()
    return ({key.decode("ascii"): row for row, key in enumerate(keys)},
            array["vector"].astype(np.float32, copy=False))


def _identity(stream: BinaryIO) -> Optional[_Identity]:
    """What tells one local file's content from another's; None for a stream without a file."""
    try:
        status = os.fstat(stream.fileno())
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns
