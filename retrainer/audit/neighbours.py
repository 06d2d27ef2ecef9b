"""Audit helper: similarity search without an N x N matrix (blocked matrix products).

Rows are compared a block (or tile) at a time, so memory stays at `block x N` floats whatever N is.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

BLOCK_ROWS = 256  # 256 x 50,000 float32 = 50 MB per block
TILE_ROWS, TILE_COLUMNS = 512, 2048  # 4 MB of cosines per tile and descriptor
PCA_SAMPLE = 512  # rows the principal axes are estimated from


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
    rows = np.asarray(matrix, np.float32).reshape(len(matrix), -1)
    if center:
        rows = rows - rows.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


def principal_components(matrix: np.ndarray, dims: int, center: bool = True) -> np.ndarray:
    """`matrix` projected on its top `dims` principal axes (unchanged if D <= dims).

    The axes come from an evenly spaced sample of at most PCA_SAMPLE rows (cost S * D^2).
    With center=False the rows are projected as they are (axes of the uncentred sample), so dot
    products between projected rows approximate the original ones.

    Returns:
        float32 [N, min(D, dims)].
    """
    matrix = np.asarray(matrix, np.float32)
    if matrix.shape[1] <= dims:
        return matrix
    if center:
        matrix = matrix - matrix.mean(axis=0)
    sample = matrix[:: max(1, len(matrix) // PCA_SAMPLE)]
    _, _, axes = np.linalg.svd(sample, full_matrices=False)
    return matrix @ axes[:dims].T


def similar_pairs(
    unit: np.ndarray, gate: float,
    keep: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None,
    limit: Optional[int] = None, other: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs i < j of rows scoring at least `gate` and passing `keep`, at most `limit` per row.

    The upper triangle of the cosines is computed in tiles of TILE_ROWS x TILE_COLUMNS (one
    matrix product each, small enough to stay in the processor's cache); `keep` sees only the
    few pairs that pass `gate`, so it can afford other descriptors. With `limit`, a pair is kept
    only if it is among the `limit` most similar of either image (a k-nearest-neighbour graph):
    in a crowd of look-alikes (plain trousers) every image passes the gate with thousands of
    others, but a true copy is among its few most similar.

    Args:
        unit: float32 [N, D], rows of length 1.
        gate: smallest score (the cosine, or the `other` score).
        keep: given the gated pairs' rows and columns (int64 [G] each), the bool [G] mask of
            pairs to return (None: every gated pair).
        limit: most partners kept per row, by score (None: all).
        other: float32 [N, D]: score a pair i, j by max(unit_i . other_j, other_i . unit_j)
            instead (two products per tile), e.g. a thumbnail against the other's enlarged centre.

    Returns:
        (first int64 [P], second int64 [P]) with first < second.
    """
    count = len(unit)
    firsts, seconds = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    nearest = None if limit is None else _Nearest(count, limit)
    for row in range(0, count, TILE_ROWS):
        row_stop = min(row + TILE_ROWS, count)
        for column in range(row, count, TILE_COLUMNS):
            column_stop = min(column + TILE_COLUMNS, count)
            if other is None:
                tile = unit[row:row_stop] @ unit[column:column_stop].T
            else:
                tile = np.maximum(unit[row:row_stop] @ other[column:column_stop].T,
                                  other[row:row_stop] @ unit[column:column_stop].T)
            rows, columns = np.nonzero(tile >= gate)
            scores = tile[rows, columns]
            rows, columns = rows + row, columns + column
            above = columns > rows
            rows, columns = rows[above].astype(np.int64), columns[above].astype(np.int64)
            scores = scores[above]
            if keep is not None:
                chosen = keep(rows, columns)
                rows, columns, scores = rows[chosen], columns[chosen], scores[chosen]
            if nearest is not None:
                nearest.add(rows, columns, scores)
            else:
                firsts.append(rows)
                seconds.append(columns)
    if nearest is not None:
        return nearest.pairs()
    return np.concatenate(firsts), np.concatenate(seconds)


class _Nearest:
    """Each row's `limit` best partners so far (scores and positions, [N, limit] each): a few MB
    for any N, instead of every gated pair."""

    def __init__(self, count: int, limit: int) -> None:
        self.scores = np.full((count, limit), -np.inf, np.float32)
        self.partners = np.full((count, limit), -1, np.int64)

    def add(self, rows: np.ndarray, columns: np.ndarray, scores: np.ndarray) -> None:
        """Offer the pairs to both of their images."""
        if not len(rows):
            return
        owners = np.concatenate([rows, columns])
        partners = np.concatenate([columns, rows])
        scores = np.concatenate([scores, scores]).astype(np.float32)
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

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Every kept (row, partner) pair once, as (first, second) with first < second."""
        owners = np.repeat(np.arange(len(self.partners)), self.partners.shape[1])
        partners = self.partners.ravel()
        valid = partners >= 0
        owners, partners = owners[valid], partners[valid]
        pairs = np.unique(np.stack([np.minimum(owners, partners),
                                    np.maximum(owners, partners)], axis=1), axis=0)
        return pairs[:, 0], pairs[:, 1]


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
