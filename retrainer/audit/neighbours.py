"""Audit helper: similarity search without an N x N matrix (blocked matrix products).

Rows are compared a block (or tile) at a time, so memory stays at `block x N` floats whatever N is.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

BLOCK_ROWS = 256  # 256 x 50,000 float32 = 50 MB per block
TILE_ROWS, TILE_COLUMNS = 512, 2048  # 4 MB of cosines per tile and descriptor
PCA_SAMPLE = 512  # rows the principal axes are estimated from


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
) -> tuple[np.ndarray, np.ndarray]:
    """Every pair i < j of rows whose cosine reaches `gate` and that passes `keep`.

    The upper triangle of the cosines is computed in tiles of TILE_ROWS x TILE_COLUMNS (one
    matrix product each, small enough to stay in the processor's cache); `keep` sees only the
    few pairs that pass `gate`, so it can afford other descriptors.

    Args:
        unit: float32 [N, D], rows of length 1.
        gate: smallest cosine.
        keep: given the gated pairs' rows and columns (int64 [G] each), the bool [G] mask of
            pairs to return (None: every gated pair).

    Returns:
        (first int64 [P], second int64 [P]) with first < second.
    """
    firsts, seconds = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    count = len(unit)
    for row in range(0, count, TILE_ROWS):
        row_stop = min(row + TILE_ROWS, count)
        for column in range(row, count, TILE_COLUMNS):
            column_stop = min(column + TILE_COLUMNS, count)
            tile = unit[row:row_stop] @ unit[column:column_stop].T
            rows, columns = np.nonzero(tile >= gate)
            rows, columns = rows + row, columns + column
            above = columns > rows
            rows, columns = rows[above].astype(np.int64), columns[above].astype(np.int64)
            if keep is not None:
                chosen = keep(rows, columns)
                rows, columns = rows[chosen], columns[chosen]
            firsts.append(rows)
            seconds.append(columns)
    return np.concatenate(firsts), np.concatenate(seconds)


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
