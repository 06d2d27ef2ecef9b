"""Audit helper: the detectors' linear algebra without an N x N matrix or whole copies.

Rows are projected, normalised and compared a block at a time, so memory stays at `block x N`
floats whatever N is. The near-pair search built on it is `retrainer.audit.pairs`.
"""

from __future__ import annotations

import functools
from typing import Any, ContextManager, Protocol, Union, overload

import numpy as np
from threadpoolctl import ThreadpoolController

from retrainer.io.scratch import ScratchRows

BLOCK_ROWS = 256  # 256 x 50,000 float32 = 50 MB per block
PCA_SAMPLE = 512  # rows the principal axes are estimated from
# Eigenvalues below this x the largest are null directions (rounding noise), per precision.
NULL_EIGENVALUE = {"float64": 1e-12, "float32": 1e-6}


class Rows(Protocol):
    """Rows that can be taken by slice or by positions, e.g. an array, or descriptors computed
    on demand from thumbnails (`lazy_rows.Described`)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: Any) -> np.ndarray: ...


@overload
def take_rows(matrix: np.ndarray, positions: np.ndarray) -> np.ndarray: ...


@overload
def take_rows(matrix: Union[np.ndarray, ScratchRows], positions: np.ndarray
              ) -> Union[np.ndarray, ScratchRows]: ...


def take_rows(matrix: Union[np.ndarray, ScratchRows], positions: np.ndarray
              ) -> Union[np.ndarray, ScratchRows]:
    """`matrix[positions]`, but `matrix` itself when `positions` are all its rows in order: at 50k
    images each copy of the vectors is 256 MB of the audit's memory. Rows in a scratch file
    are taken into another one."""
    if len(positions) == len(matrix) and np.array_equal(positions, np.arange(len(matrix))):
        return matrix
    if isinstance(matrix, ScratchRows):
        return matrix.take(positions)
    return matrix[positions]


def unit_rows(matrix: np.ndarray, center: bool = False) -> np.ndarray:
    """Rows scaled to length 1 (optionally mean-centred first); all-zero rows stay zero.

    Args:
        matrix: float [N, D].
        center: subtract each row's mean first (a correlation rather than a cosine).

    Returns:
        float32 [N, D].
    """
    matrix = np.asarray(matrix, np.float32)
    rows = matrix.reshape(len(matrix), int(np.prod(matrix.shape[1:])))  # also for 0 rows
    if center:
        rows = rows - rows.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


def unit_components(matrix: Rows, dims: int, center: bool = True,
                    normalize: bool = False) -> np.ndarray:
    """`unit_rows(principal_components(...))` (same arguments, same values), scaled in place
    BLOCK_ROWS rows at a time unless the projection is `matrix` itself: no second N x dims
    array (256 MB at a million images).

    Returns:
        float32 [N, min(D, dims, S)], rows of length 1 (all-zero rows stay zero).
    """
    projected = principal_components(matrix, dims, center, normalize)
    if (isinstance(matrix, np.ndarray) and np.shares_memory(projected, matrix)) \
            or not projected.flags.writeable or not projected.flags.c_contiguous:
        return unit_rows(projected)
    for start in range(0, len(projected), BLOCK_ROWS):
        block = projected[start:start + BLOCK_ROWS]
        block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
    return projected


def principal_components(matrix: Rows, dims: int, center: bool = True,
                         normalize: bool = False) -> np.ndarray:
    """`matrix` projected on its top `dims` principal axes (unchanged if D <= dims).

    The axes come from an evenly spaced sample of at most PCA_SAMPLE rows (cost S * D^2). The
    rows are centred, normalised and projected BLOCK_ROWS at a time, so no copy of `matrix` is
    made (at 50k x 1280 each copy is 256 MB of the audit's memory). When the sample is every row
    and narrower than it is wide, the projections come straight from its Gram matrix's
    eigenvectors (U S of its SVD): no axes, no products with the D-wide rows.

    Args:
        matrix: float [N, D].
        dims: axes kept.
        center: subtract the column means first. With center=False the rows are projected as
            they are (axes of the uncentred sample), so dot products between projected rows
            approximate the original ones.
        normalize: scale each row to length 1 first (`unit_rows`), e.g. for cosines.

    Returns:
        float32 [N, min(D, dims, S)].
    """
    def rows(selection: slice) -> np.ndarray:
        block = np.asarray(matrix[selection], np.float32)
        return unit_rows(block) if normalize else block

    if matrix.shape[1] <= dims:
        return rows(slice(None))
    if not len(matrix):  # no rows: no mean, no axes
        return np.zeros((0, dims), np.float32)
    blocks = [slice(start, start + BLOCK_ROWS) for start in range(0, len(matrix), BLOCK_ROWS)]
    mean = np.zeros(matrix.shape[1], np.float32)
    if center:
        mean = (sum(rows(block).sum(axis=0, dtype=np.float64) for block in blocks)
                / len(matrix)).astype(np.float32)
    sample = rows(sample_rows(len(matrix))) - mean
    if len(sample) == len(matrix) <= matrix.shape[1]:
        # float32 (what is returned): LAPACK's eigensolver on a 1,000 x 1,000 Gram matrix
        # then takes half the time of float64's, the projections the same to float32 rounding.
        values, vectors = _top_eigenpairs(np.asarray(sample, np.float32), dims)
        if not len(values):  # every row the same: one zero component
            return np.zeros((len(matrix), 1), np.float32)
        return vectors * np.sqrt(values)
    projection = top_axes(sample, dims).T
    projected = np.empty((len(matrix), projection.shape[1]), np.float32)  # fewer if S < dims
    for block in blocks:
        projected[block] = (rows(block) - mean) @ projection
    return projected


def top_axes(sample: np.ndarray, dims: int) -> np.ndarray:
    """float32 [min(dims, S, D), D]: the top right singular vectors of `sample` [S, D].

    From the eigenvectors of the smaller of its Gram matrix (S x S) and its scatter matrix
    (D x D), only the top `dims` of them (LAPACK's MRRR), on one BLAS thread: an eigensolver's
    many small steps ran up to 10x slower on two threads of a shared 2-core machine. Signs are
    arbitrary (as an SVD's), which no cosine or fit here sees.
    """
    sample = np.asarray(sample, np.float64)
    count, width = sample.shape
    gram = count <= width
    values, vectors = _top_eigenpairs(sample, dims)
    if not len(values):  # every sampled row the same: one zero axis (all project to 0)
        return np.zeros((1, width), np.float32)
    with one_blas_thread():
        axes = (sample.T @ vectors) / np.sqrt(values) if gram else vectors
    return axes.T.astype(np.float32)


def _top_eigenpairs(sample: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """The top `dims` eigenpairs, largest first, of the smaller of float `sample`'s Gram
    matrix (S x S) and scatter matrix (D x D), without null directions: (values [K], vectors
    [S or D, K])."""
    count, width = sample.shape
    with one_blas_thread():
        square = sample @ sample.T if count <= width else sample.T @ sample
        size = len(square)
        keep = min(dims, size)
        if size > 4 * keep:  # only the top ones: 2x faster from about 500 x 500
            import scipy.linalg  # ~0.3 s to import: a rerun reads the kept findings

            values, vectors = scipy.linalg.eigh(square, subset_by_index=(size - keep, size - 1),
                                                driver="evr")
        else:  # all: faster on small matrices (4 ms against 20 for 200 x 200)
            values, vectors = np.linalg.eigh(square)
    values, vectors = values[::-1][:keep], vectors[:, ::-1][:, :keep]  # largest first
    useful = values > max(values.max(initial=0.0), 0.0) * NULL_EIGENVALUE[sample.dtype.name]
    return values[useful], vectors[:, useful]


def one_blas_thread() -> ContextManager[object]:
    """A context in which numpy's and scipy's BLAS run on one thread: the audit's small linear
    algebra (eigensolvers, L-BFGS) ran up to 10x slower with two threads spinning on 2 shared
    cores. The controller is made once: finding the BLAS libraries costs ~15 ms a time."""
    return _blas_controller().limit(limits=1, user_api="blas")


@functools.cache
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()


def row_norms(matrix: np.ndarray) -> np.ndarray:
    """float32 [N]: each row's length, computed BLOCK_ROWS rows at a time (no copy of `matrix`)."""
    return np.concatenate([np.linalg.norm(np.asarray(matrix[start:start + BLOCK_ROWS], np.float32),
                                          axis=1) for start in range(0, len(matrix), BLOCK_ROWS)]
                          or [np.zeros(0, np.float32)])


def pair_cosines(matrix: np.ndarray, norms: np.ndarray, firsts: np.ndarray,
                 seconds: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """float32 [P]: the cosine of rows `firsts[p]` and `seconds[p]` of `matrix` (norms from
    `row_norms`), gathering `chunk` pairs' rows at a time rather than normalised copies."""
    cosines = np.empty(len(firsts), np.float32)
    for start in range(0, len(firsts), chunk):
        first, second = firsts[start:start + chunk], seconds[start:start + chunk]
        dots = np.einsum("ij,ij->i", np.asarray(matrix[first], np.float32),
                         np.asarray(matrix[second], np.float32))
        cosines[start:start + chunk] = dots / np.maximum(norms[first] * norms[second], 1e-24)
    return cosines


def sample_rows(count: int) -> slice:
    """The evenly spaced rows (about PCA_SAMPLE of `count`) that principal axes come from."""
    return slice(None, None, max(1, count // PCA_SAMPLE))


def mean_neighbour_distance(unit: np.ndarray, k: int) -> np.ndarray:
    """Mean cosine distance (1 - cosine) of each row to its `k` nearest other rows.

    Args:
        unit: float32 [N, D], rows of length 1, N > k.
        k: neighbours per row.

    Returns:
        float32 [N].
    """
    distances = np.empty(len(unit), np.float32)
    for start in range(0, len(unit), BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, len(unit))
        block = unit[start:stop] @ unit.T
        block[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # not itself
        nearest = -np.partition(-block, k - 1, axis=1)[:, :k]
        distances[start:stop] = 1.0 - nearest.mean(axis=1)
    return distances
