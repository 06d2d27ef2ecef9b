"""The near-duplicate search's rows of many images, kept in memory or made when taken: up to
WHOLE_DESCRIBED images a descriptor is one array (each pass and test reuses it); above, its rows
are computed from the thumbnails or vectors when a pass or test takes them (`Described`,
`Reduced`), so a million images hold no 1 GB arrays. Either way the same values (`duplicates`
searches with them).
"""

from __future__ import annotations

from typing import Any, Callable, Union

import numpy as np

from retrainer.audit.neighbours import (
    BLOCK_ROWS,
    Rows,
    sample_rows,
    take_rows,
    top_axes,
    unit_components,
    unit_rows,
)
from retrainer.io.scratch import ScratchRows

WHOLE_DESCRIBED = 200_000  # images up to which the wide descriptors are kept whole
Thumbnails = Union[np.ndarray, ScratchRows]  # uint8 [N, 32, 32]; indexing gives arrays


def reduced_vectors(vectors: np.ndarray, keep: np.ndarray, dims: int) -> Rows:
    """The kept vectors' `unit_components(vectors, dims, center=False, normalize=True)` (the
    passes' cosine pre-tests): an array up to WHOLE_DESCRIBED images, above computed when rows
    are taken (`Reduced`: 256 MB at a million images, held through all three passes)."""
    if len(keep) <= WHOLE_DESCRIBED or vectors.shape[1] <= dims:
        return take_rows(unit_components(vectors, dims, center=False, normalize=True), keep)
    # principal_components' axes for these arguments: those of its unit-length sample rows
    return Reduced(vectors, keep, top_axes(unit_rows(vectors[sample_rows(len(vectors))]), dims).T)


class Reduced:
    """Rows `keep` of `vectors` scaled to length 1, projected on `projection` and scaled to
    length 1 (`Rows`): `unit_components`' values, computed when taken. A slice is computed
    BLOCK_ROWS rows at a time from its start, as `unit_components` computes every row: with
    every row kept (distinct files), a slice starting at a multiple of BLOCK_ROWS (the index's
    blocks) gives the same floats; other rows the same values to float32 rounding."""

    def __init__(self, vectors: np.ndarray, keep: np.ndarray, projection: np.ndarray) -> None:
        self.vectors, self.projection = vectors, projection
        every = len(keep) == len(vectors) and np.array_equal(keep, np.arange(len(vectors)))
        self.keep = None if every else keep  # None: rows taken by slice, no gather
        self.shape = (len(keep), projection.shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        if not isinstance(index, slice):
            return self._rows(np.asarray(index) if self.keep is None else self.keep[index])
        start, stop, step = index.indices(len(self))
        if step != 1:
            return self[np.arange(start, stop, step)]
        rows = np.empty((max(stop - start, 0), self.shape[1]), np.float32)
        for block in range(start, stop, BLOCK_ROWS):
            end = min(block + BLOCK_ROWS, stop)
            rows[block - start:end - start] = self._rows(
                slice(block, end) if self.keep is None else self.keep[block:end])
        return rows

    def _rows(self, positions: Any) -> np.ndarray:
        projected = unit_rows(self.vectors[positions]) @ self.projection
        return projected / np.maximum(np.linalg.norm(projected, axis=1, keepdims=True), 1e-12)


def described(describe: Callable[[np.ndarray], np.ndarray], thumbnails: Thumbnails) -> Rows:
    """The wide descriptors (128-256 floats per image): an array up to WHOLE_DESCRIBED images
    (each pass and test reuses it), computed when rows are taken above (`Described`: no 1 GB
    arrays at 1M images; the near pairs are the same)."""
    if len(thumbnails) <= WHOLE_DESCRIBED:
        return per_chunk(describe, thumbnails)
    return Described(describe, thumbnails)


class Described:
    """Descriptors of thumbnails computed when rows are taken (`Rows`): `described[index]` is
    `describe(thumbnails[index])`, e.g. 256 floats per image that would be 1 GB at 1M images."""

    def __init__(self, describe: Callable[[np.ndarray], np.ndarray],
                 thumbnails: Thumbnails) -> None:
        self.describe, self.thumbnails = describe, thumbnails
        self.shape = (len(thumbnails), describe(thumbnails[:1]).shape[1])

    def __len__(self) -> int:
        return len(self.thumbnails)

    def __getitem__(self, index: Any) -> np.ndarray:
        return per_chunk(self.describe, self.thumbnails[index])


def kept(whole: np.ndarray, describe: Callable[[np.ndarray], np.ndarray],
         thumbnails: Thumbnails) -> Rows:
    """`whole` (`describe(thumbnails)`, made for one pass) kept for the candidates' tests up to
    WHOLE_DESCRIBED images; above, a `Described` of it, so that `whole` can be freed."""
    return whole if len(thumbnails) <= WHOLE_DESCRIBED else Described(describe, thumbnails)


def per_chunk(describe: Callable[[np.ndarray], np.ndarray], thumbnails: Thumbnails,
              rows: int = 4096) -> np.ndarray:
    """`describe(thumbnails)`, computed `rows` thumbnails at a time: the descriptors' float
    intermediates (4 KB per thumbnail, a complex spectrum more) then stay at a few MB for any N;
    each chunk is written into the result (a list of chunks and their concatenation held the
    descriptors twice: 512 MB for a million 64-wide rows)."""
    first = describe(thumbnails[:rows])
    described = np.empty((len(thumbnails), *first.shape[1:]), first.dtype)
    described[:len(first)] = first
    for start in range(rows, len(thumbnails), rows):
        described[start:start + rows] = describe(thumbnails[start:start + rows])
    return described
