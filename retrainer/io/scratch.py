"""Rows kept on disk instead of in memory: an array in an unlinked scratch file.

At a million images the audit's thumbnails are 1 GB, read in chunks and gathered a few rows at a
time. `ScratchRows` holds them in a file (created in a given folder and unlinked at once, so
nothing is left behind, whatever ends the process) and hands out copies of the rows asked for,
read with `pread` (a slice in one call, scattered rows one call each): a memory map would not do for reading,
since each page fault maps the 15 pages around it too (the kernel's fault-around), so a gather
of a few thousand scattered rows maps the whole file into the process. Writes go through a
shared memory map whose pages are dropped from the process (`madvise(MADV_DONTNEED)`) whenever
about RESIDENT_BYTES have been written since the last drop. The kernel keeps the file's pages in
its page cache while memory allows, so reading them again costs a copy, not a disk read. No
file can be made (a remote or read-only folder): `scratch_or_memory` gives an ordinary array.
"""

from __future__ import annotations

import logging
import mmap
import os
import tempfile
from typing import Any, Optional, Union

import numpy as np

log = logging.getLogger(__name__)

RESIDENT_BYTES = 64 << 20
PAGE = mmap.PAGESIZE


class ScratchRows:
    """An array [N, ...] of `dtype`, zeros until written, in a scratch file (module docstring).

    Indexed like an array by a slice, an int or an array of positions; reading gives a copy
    in memory (np.ndarray), writing goes to the file.
    """

    def __init__(self, shape: tuple[int, ...], dtype: Any, folder: Union[str, os.PathLike[str]]
                 ) -> None:
        """Raises OSError when the file cannot be made in `folder`."""
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.folder = folder
        size = max(1, int(np.prod(shape)) * self.dtype.itemsize)
        descriptor, name = tempfile.mkstemp(prefix=".scratch-", dir=folder)
        try:
            os.unlink(name)
            os.ftruncate(descriptor, size)  # sparse: reads as zeros
            self._map = mmap.mmap(descriptor, size)
        except BaseException:
            os.close(descriptor)
            raise
        self._file = descriptor  # closed with the object (`__del__`)
        self._rows = np.frombuffer(self._map, self.dtype, int(np.prod(shape))).reshape(shape)
        self._row_bytes = self._rows[:1].nbytes
        self._written = 0

    def __del__(self) -> None:
        if hasattr(self, "_file"):
            os.close(self._file)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                rows = np.empty((max(0, stop - start), *self.shape[1:]), self.dtype)
                self._read_into(rows, start)
                return rows
            index = np.arange(start, stop, step)
        positions = np.asarray(index)
        if positions.dtype == bool:
            positions = np.flatnonzero(positions)
        flat = np.where(positions < 0, positions + len(self), positions).ravel()
        if flat.size and (flat.min() < 0 or flat.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} rows")
        unique, inverse = np.unique(flat, return_inverse=True)
        # One pread per row, in a list comprehension: half the time of a loop over runs of
        # consecutive rows (scattered rows, as the audit gathers them, rarely make runs).
        size = self._row_bytes
        data = b"".join([os.pread(self._file, size, offset)
                         for offset in (unique * size).tolist()])
        if len(data) != len(unique) * size:
            raise OSError(f"scratch file shorter than its {len(self)} rows")
        rows = np.frombuffer(data, self.dtype).reshape(len(unique), *self.shape[1:])
        return rows[inverse.ravel()].reshape(positions.shape + self.shape[1:])

    def _read_into(self, rows: np.ndarray, start: int) -> None:
        """Fill consecutive `rows` from row `start` on."""
        view, offset = rows.reshape(-1).view(np.uint8).data, start * self._row_bytes
        while len(view):
            count = os.preadv(self._file, [view], offset)
            if count <= 0:
                raise OSError(f"scratch file ended at byte {offset}")
            view, offset = view[count:], offset + count

    def __setitem__(self, index: Any, value: Any) -> None:
        self._rows[index] = value
        count = (len(range(*index.indices(len(self)))) if isinstance(index, slice)
                 else 1 if np.ndim(index) == 0 else int(np.size(index)))
        self._written += count * max(self._row_bytes, PAGE)
        if self._written >= RESIDENT_BYTES:
            self.release()

    def take(self, positions: np.ndarray, chunk: int = 1 << 14) -> ScratchRows:
        """The rows at `positions` (int [M]), in that order, in a new scratch file beside this
        one (copied `chunk` rows at a time)."""
        taken = ScratchRows((len(positions), *self.shape[1:]), self.dtype, self.folder)
        for start in range(0, len(positions), chunk):
            taken[start:start + chunk] = self[positions[start:start + chunk]]
        return taken

    def release(self) -> None:
        """Drop every written page from this process's memory (the content stays)."""
        if hasattr(mmap, "MADV_DONTNEED"):  # Linux, macOS; elsewhere the kernel decides
            self._map.madvise(mmap.MADV_DONTNEED)
        self._written = 0


def scratch_or_memory(shape: tuple[int, ...], dtype: Any,
                      folder: Optional[Union[str, os.PathLike[str]]]
                      ) -> Union[np.ndarray, ScratchRows]:
    """Zeros of `shape`: a `ScratchRows` file in `folder` (made if missing), or in memory when
    `folder` is None or no file can be made there."""
    if folder is not None:
        try:
            os.makedirs(folder, exist_ok=True)
            return ScratchRows(shape, dtype, folder)
        except (OSError, ValueError) as error:
            log.debug("No scratch file in %s (%s); keeping the rows in memory.", folder, error)
    return np.zeros(shape, dtype)
