"""Audit helper: similarity search without an N x N matrix (blocked matrix products).

Rows are compared a block (or tile) at a time, so memory stays at `block x N` floats whatever N is.
"""

from __future__ import annotations

import functools
from typing import Callable, ContextManager, Optional

import numpy as np
import scipy.linalg
from threadpoolctl import ThreadpoolController

from retrainer.audit._threads import in_order

BLOCK_ROWS = 256  # 256 x 50,000 float32 = 50 MB per block
TILE_ROWS, TILE_COLUMNS = 512, 2048  # 4 MB of cosines per tile and descriptor
PCA_SAMPLE = 512  # rows the principal axes are estimated from
# Eigenvalues below this x the largest are null directions (rounding noise), per precision.
NULL_EIGENVALUE = {"float64": 1e-12, "float32": 1e-6}


def take_rows(matrix: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """`matrix[positions]`, but `matrix` itself when `positions` are all its rows in order: at 50k
    images each copy of the vectors is 256 MB of the audit's memory."""
    if len(positions) == len(matrix) and np.array_equal(positions, np.arange(len(matrix))):
        return matrix
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


def principal_components(matrix: np.ndarray, dims: int, center: bool = True,
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
    blocks = [slice(start, start + BLOCK_ROWS) for start in range(0, len(matrix), BLOCK_ROWS)]
    mean = np.zeros(matrix.shape[1], np.float32)
    if center:
        mean = (sum(rows(block).sum(axis=0, dtype=np.float64) for block in blocks)
                / len(matrix)).astype(np.float32)
    sample = rows(_sample_rows(len(matrix))) - mean
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


def similar_pairs(
    unit: np.ndarray, gate: float,
    keep: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None,
    limit: Optional[int] = None, other: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs i < j of rows scoring at least `gate` and passing `keep`, at most `limit` per row.

    Two rows of length 1 with cosine >= gate lie within `reach` = sqrt(2 - 2 gate) of each
    other, so also along any axis: rows are sorted by their coordinate on the data's main axis,
    and each block of TILE_ROWS rows is compared (one matrix product per tile of TILE_COLUMNS,
    small enough to stay in the processor's cache) only with the rows whose coordinate is within
    `reach` of the block's. No pair that can pass the gate is skipped, and most others are.
    `keep` sees only the few pairs that pass `gate`, so it can afford other descriptors. With
    `limit`, a pair is kept only if it is among the `limit` most similar of either image (a
    k-nearest-neighbour graph): in a crowd of look-alikes (plain trousers) every image passes
    the gate with thousands of others, but a true copy is among its few most similar.

    Args:
        unit: float32 [N, D], rows of length 1.
        gate: smallest score (the cosine, or the `other` score).
        keep: given the gated pairs' rows and columns (int64 [G] each), the bool [G] mask of
            pairs to return (None: every gated pair).
        limit: most partners kept per row, by score (None: all).
        other: float32 [N, D], rows of length 1: score a pair i, j by
            max(unit_i . other_j, other_i . unit_j) instead, e.g. a thumbnail against the other's
            enlarged centre.

    Returns:
        (first int64 [P], second int64 [P]) with first < second.
    """
    symmetric = other is None
    other = unit if other is None else other
    count = len(unit)
    reach = float(np.sqrt(max(0.0, 2.0 - 2.0 * gate)))
    axis = _main_axis(unit if symmetric else np.concatenate([unit, other]))
    row_keys = unit @ axis
    row_order = np.argsort(row_keys, kind="stable")
    row_keys = row_keys[row_order]
    if symmetric:
        column_keys, column_order = row_keys, row_order
    else:
        column_keys = other @ axis
        column_order = np.argsort(column_keys, kind="stable")
        column_keys = column_keys[column_order]
    rows_sorted, columns_sorted = unit[row_order], other[column_order]
    nearest = None if limit is None else _Nearest(count, limit)

    def block_pairs(row: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(rows, columns, scores) of the pairs of one block of rows, a tile at a time."""
        row_stop = min(row + TILE_ROWS, count)
        start = int(np.searchsorted(column_keys, row_keys[row] - reach, "left"))
        stop = int(np.searchsorted(column_keys, row_keys[row_stop - 1] + reach, "right"))
        if symmetric:
            start = max(start, row)  # pairs with an earlier row were found from that row
        found = []
        for column in range(start, stop, TILE_COLUMNS):
            column_stop = min(column + TILE_COLUMNS, stop)
            tile = rows_sorted[row:row_stop] @ columns_sorted[column:column_stop].T
            flat = np.flatnonzero(tile >= gate)  # 15x faster than a 2-D np.nonzero
            scores = tile.ravel()[flat]
            rows, columns = np.divmod(flat, tile.shape[1])
            rows, columns = rows + row, columns + column  # positions in sorted order
            if symmetric:
                above = rows < columns  # each pair once
                rows, columns = row_order[rows], column_order[columns]
                rows, columns = np.minimum(rows, columns), np.maximum(rows, columns)
            else:
                rows, columns, scores, above = _one_direction(
                    unit, other, row_order[rows], column_order[columns], gate)
            rows, columns, scores = rows[above], columns[above], scores[above]
            if nearest is not None:  # `keep` only for pairs that can still enter a row's best
                rows, columns, scores = nearest.contenders(rows, columns, scores)
            if keep is not None:
                chosen = keep(rows, columns)
                rows, columns, scores = rows[chosen], columns[chosen], scores[chosen]
            found.append((rows, columns, scores))
        return found

    # Blocks on every CPU, added in order (as one thread would); a block computed while
    # another is added sees slightly older cut-offs, so `contenders` lets a few more through,
    # which `add` then drops: the same pairs either way.
    firsts, seconds = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for found in in_order(block_pairs, range(0, count, TILE_ROWS)):
        for rows, columns, scores in found:
            if nearest is not None:
                nearest.add(rows, columns, scores)
            else:
                firsts.append(rows)
                seconds.append(columns)
    if nearest is not None:
        return nearest.pairs()
    return np.concatenate(firsts), np.concatenate(seconds)


def _main_axis(matrix: np.ndarray, steps: int = 16) -> np.ndarray:
    """float32 [D], length 1: about the first principal axis of an evenly spaced sample of rows
    (the direction the rows spread most along, so sorting by it separates them best), by a few
    power-iteration steps from the sample's longest centred row. Only the search's speed depends
    on how close it comes: `similar_pairs` skips no pair for any axis of length 1."""
    sample = np.asarray(matrix[_sample_rows(len(matrix))], np.float32)
    sample = sample - sample.mean(axis=0)
    axis = sample[np.argmax(np.einsum("ij,ij->i", sample, sample))] if len(sample) else None
    for _ in range(steps):
        if axis is None or not np.any(axis):
            break
        axis = sample.T @ (sample @ axis)
        axis /= np.linalg.norm(axis)
    if axis is None or not np.any(axis):  # every sampled row the same: any axis will do
        axis = np.zeros(matrix.shape[1], np.float32)
        axis[:1] = 1.0
    return axis.astype(np.float32)


def _sample_rows(count: int) -> slice:
    """The evenly spaced rows (about PCA_SAMPLE of `count`) that principal axes come from."""
    return slice(None, None, max(1, count // PCA_SAMPLE))


def _one_direction(unit: np.ndarray, other: np.ndarray, rows: np.ndarray, columns: np.ndarray,
                   gate: float) -> tuple[np.ndarray, ...]:
    """For ordered pairs (i, j) with unit_i . other_j >= gate (from a tile): each as (first,
    second, score, mask) with its score max(unit_i . other_j, other_i . unit_j), masked so that
    each unordered pair counts once, from the direction that scores best (both are gathered, so
    the two directions agree exactly)."""
    forward = np.einsum("ij,ij->i", unit[rows], other[columns])
    backward = np.einsum("ij,ij->i", other[rows], unit[columns])
    best = (forward > backward) | ((forward == backward) & (rows < columns))
    scores = np.maximum(forward, backward)
    mask = best & (rows != columns) & (scores >= gate)
    return np.minimum(rows, columns), np.maximum(rows, columns), scores, mask


class _Nearest:
    """Each row's `limit` best partners so far (scores and positions, [N, limit] each): a few MB
    for any N, instead of every gated pair."""

    def __init__(self, count: int, limit: int) -> None:
        self.scores = np.full((count, limit), -np.inf, np.float32)
        self.partners = np.full((count, limit), -1, np.int64)
        self.floor = np.full(count, -np.inf, np.float32)  # each row's worst kept score

    def contenders(self, rows: np.ndarray, columns: np.ndarray,
                   scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The pairs `add` would not drop at once (better than either image's worst kept
        partner): in a crowd of look-alikes most gated pairs lose, before any other test."""
        chosen = (scores > self.floor[rows]) | (scores > self.floor[columns])
        return rows[chosen], columns[chosen], scores[chosen]

    def add(self, rows: np.ndarray, columns: np.ndarray, scores: np.ndarray) -> None:
        """Offer the pairs to both of their images."""
        owners = np.concatenate([rows, columns])
        partners = np.concatenate([columns, rows])
        scores = np.concatenate([scores, scores]).astype(np.float32)
        better = scores > self.floor[owners]  # most offers lose at once once rows fill up
        owners, partners, scores = owners[better], partners[better], scores[better]
        if not len(owners):
            return
        order = np.lexsort((-scores, owners))  # by owner, best first
        owners, partners, scores = owners[order], partners[order], scores[order]
        limit = self.scores.shape[1]
        starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
        rank = np.arange(len(owners)) - np.repeat(starts, np.diff(np.r_[starts, len(owners)]))
        unique = owners[starts]
        top = rank < limit
        owners, partners, scores, rank = owners[top], partners[top], scores[top], rank[top]
        slot = np.searchsorted(unique, owners)
        offered_scores = np.full((len(unique), limit), -np.inf, np.float32)
        offered_partners = np.full((len(unique), limit), -1, np.int64)
        offered_scores[slot, rank] = scores
        offered_partners[slot, rank] = partners
        merged_scores = np.concatenate([self.scores[unique], offered_scores], axis=1)
        merged_partners = np.concatenate([self.partners[unique], offered_partners], axis=1)
        best = np.argpartition(-merged_scores, limit - 1, axis=1)[:, :limit]
        self.scores[unique] = np.take_along_axis(merged_scores, best, axis=1)
        self.partners[unique] = np.take_along_axis(merged_partners, best, axis=1)
        self.floor[unique] = self.scores[unique].min(axis=1)

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Every kept (row, partner) pair once, as (first, second) with first < second."""
        owners = np.repeat(np.arange(len(self.partners)), self.partners.shape[1])
        partners = self.partners.ravel()
        valid = partners >= 0
        owners, partners = owners[valid], partners[valid]
        return unique_pairs(np.minimum(owners, partners), np.maximum(owners, partners))


def unique_pairs(firsts: np.ndarray, seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (first, second) pairs of non-negative ints, sorted: (int64 [P], int64 [P]).

    One int64 key per pair, since np.unique(axis=0) sorts rows 6x slower."""
    firsts, seconds = np.asarray(firsts, np.int64), np.asarray(seconds, np.int64)
    base = int(seconds.max()) + 1 if len(seconds) else 1
    keys = np.unique(firsts * base + seconds)
    return keys // base, keys % base


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
