"""Audit helper: pairs of similar rows (near duplicates) without an N x N matrix.

Two ways to the same pairs: an exact search in a sorted window, a block (or tile) of rows at a
time, and, when that window would hold too many pairs, a hashing index (`lsh`) whose candidates
are scored exactly. `similar_pairs` chooses (docs/audit.md).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from retrainer.audit import lsh
from retrainer.audit._nearest import Nearest, unique_pairs
from retrainer.audit._threads import in_order
from retrainer.audit.neighbours import BLOCK_ROWS, Rows, sample_rows, top_axes

__all__ = ["similar_pairs", "unique_pairs"]

log = logging.getLogger(__name__)

TILE_ROWS, TILE_COLUMNS = 512, 2048  # 4 MB of cosines per tile and descriptor
# The exact near-pair search runs while its sorted window holds at most this many pairs (~10 s of
# matrix products on one core); beyond, the hashing index (`lsh`) finds the candidates.
EXACT_COMPARISONS = 2**31
SKETCH_DIMENSIONS = 64  # wider rows are hashed by their projection on this many top axes
# ... and only when the window would cost more than INDEX_OVERHEAD x the index's row products
# (its bucket joins and gathers cost more per product than the window's tiles).
INDEX_OVERHEAD = 2.0
PAIR_CHUNK = 1 << 15  # pairs whose rows are gathered at a time
# squared distance added to a reach before a pair's sketches rule it out: rows of length 1 give
# or take float32 rounding (~1e-6) would need far less
SKETCH_MARGIN = 1e-3
PREFIX_DIMENSIONS = 16  # columns of the wide rows' sketches kept for that test (64 MB a side)
SEED = 0  # draws the index's projections: the same pairs on every run

_Scored = tuple[np.ndarray, np.ndarray, np.ndarray]  # rows, columns, scores of pairs
_Screen = Callable[[np.ndarray, np.ndarray, np.ndarray], _Scored]


def similar_pairs(
    unit: Rows, gate: float,
    keep: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None,
    limit: Optional[int] = None, other: Optional[Rows] = None, method: str = "auto",
    alternatives: Sequence[tuple[Rows, float]] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs i < j of rows scoring at least `gate` and passing `keep`, at most `limit` per row.

    Two rows of length 1 with cosine >= gate lie within `reach` = sqrt(2 - 2 gate) of each
    other, so also along any axis. The exact search sorts rows by their coordinate on the data's
    main axis and compares each block of TILE_ROWS rows (one matrix product per tile of
    TILE_COLUMNS, small enough to stay in the processor's cache) only with the rows whose
    coordinate is within `reach` of the block's: no pair that can pass the gate is skipped. When
    that window still holds more than EXACT_COMPARISONS pairs (rows spread evenly around the
    axis, e.g. a million unrelated pictures), the pairs are looked for with `retrainer.audit.lsh`
    instead, on the rows (or, wider than SKETCH_DIMENSIONS, their projection on the top
    principal axes, which brings no pair further apart), and every candidate is scored exactly;
    a pair exactly at the gate is then missed with probability at most `lsh.MISS`.
    `keep` sees only the few pairs that pass `gate`, so it can afford other descriptors. With
    `limit`, a pair is kept only if it is among the `limit` most similar of either image (a
    k-nearest-neighbour graph, `_nearest.Nearest`).

    Args:
        unit: float32 [N, D], rows of length 1 (an array, or any `Rows` computing them).
        gate: smallest score (the cosine, or the `other` score).
        keep: given the gated pairs' rows and columns (int64 [G] each), the bool [G] mask of
            pairs to return (None: every gated pair).
        limit: most partners kept per row, by score (None: all).
        other: float32 [N, D], rows of length 1: score a pair i, j by
            max(unit_i . other_j, other_i . unit_j) instead, e.g. a thumbnail against the other's
            enlarged centre.
        method: "exact", "index" (hashing), or "auto" (exact while its window is small).
        alternatives: what `keep` requires besides the gate, as (float32 [N, <= 64] rows of
            length 1, an array or any `Rows`; gate) pairs of which a kept pair reaches at
            least one: the index then looks only where such pairs can be (`lsh.Part`s: the
            main rows AND one of these), `keep` still decides.

    Returns:
        (first int64 [P], second int64 [P]) with first < second.
    """
    count = len(unit)
    if count < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    reach = _reach(gate)
    axis = _main_axis([unit] if other is None else [unit, other])
    search = _WindowSearch(unit, other, axis, reach)
    nearest = None if limit is None else Nearest(count, limit)

    def screen(rows: np.ndarray, columns: np.ndarray, scores: np.ndarray) -> _Scored:
        """The gated pairs that pass `keep` and can still enter a row's best (on the worker
        threads; a block computed while another is added sees slightly older cut-offs, so a
        few more pass, which `add` then drops: the same pairs either way)."""
        if nearest is not None:
            rows, columns, scores = nearest.contenders(rows, columns, scores)
        if keep is not None:
            chosen = keep(rows, columns)
            rows, columns, scores = rows[chosen], columns[chosen], scores[chosen]
        return rows, columns, scores

    index = None
    if method == "index" or (method == "auto" and search.comparisons > EXACT_COMPARISONS):
        index = _Index(unit, other, reach, alternatives)
        cost = index.cost
        if method == "auto" and search.comparisons <= INDEX_OVERHEAD * cost:
            index = None  # crowded rows (look-alikes): the window search is still cheaper
        log.info("Near-pair search: %d comparisons in the sorted window, about %d row products "
                 "in the index: %s.", search.comparisons, cost,
                 "the window" if index is None else "the index")
    chunks = (search.pairs(gate, screen) if index is None
              else index.pairs(gate, screen, None if nearest is None else nearest.contending))
    firsts, seconds = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for rows, columns, scores in chunks:
        if not len(rows):
            continue
        if nearest is not None:
            nearest.add(rows, columns, scores)
        else:
            firsts.append(rows)
            seconds.append(columns)
    if nearest is not None:
        return nearest.pairs()
    return np.concatenate(firsts), np.concatenate(seconds)


class _WindowSearch:
    """The exact search: rows sorted by their coordinate on `axis`, each block of rows against
    the columns within `reach` of it (see `similar_pairs`)."""

    def __init__(self, unit: Rows, other: Optional[Rows], axis: np.ndarray,
                 reach: float) -> None:
        self.unit, self.other = unit, other
        self.row_keys = _products(unit, axis)
        self.row_order = np.argsort(self.row_keys, kind="stable")
        self.row_keys = self.row_keys[self.row_order]
        if other is None:
            self.column_keys, self.column_order = self.row_keys, self.row_order
        else:
            self.column_keys = _products(other, axis)
            self.column_order = np.argsort(self.column_keys, kind="stable")
            self.column_keys = self.column_keys[self.column_order]
        self.windows = [self._window(row, reach) for row in range(0, len(unit), TILE_ROWS)]
        self.comparisons = sum((min(row + TILE_ROWS, len(unit)) - row) * (stop - start)
                               for row, (start, stop) in zip(range(0, len(unit), TILE_ROWS),
                                                             self.windows))

    def _window(self, row: int, reach: float) -> tuple[int, int]:
        row_stop = min(row + TILE_ROWS, len(self.unit))
        start = int(np.searchsorted(self.column_keys, self.row_keys[row] - reach, "left"))
        stop = int(np.searchsorted(self.column_keys, self.row_keys[row_stop - 1] + reach,
                                   "right"))
        if self.other is None:
            start = max(start, row)  # pairs with an earlier row were found from that row
        return start, stop

    def pairs(self, gate: float, screen: _Screen) -> Iterator[_Scored]:
        """`screen`(rows, columns, scores) of the gated pairs, a tile at a time; blocks on
        every CPU, yielded in order (as one thread would)."""
        whole = np.asarray(self.unit[:], np.float32)  # computed once if described
        unit = whole[self.row_order]
        other = None if self.other is None else np.asarray(self.other[:], np.float32)
        columns_sorted = unit if other is None else other[self.column_order]
        row_order, column_order = self.row_order, self.column_order

        def block_pairs(row: int) -> list[_Scored]:
            row_stop = min(row + TILE_ROWS, len(unit))
            start, stop = self.windows[row // TILE_ROWS]
            found = []
            for column in range(start, stop, TILE_COLUMNS):
                column_stop = min(column + TILE_COLUMNS, stop)
                tile = unit[row:row_stop] @ columns_sorted[column:column_stop].T
                flat = np.flatnonzero(tile >= gate)  # 15x faster than a 2-D np.nonzero
                scores = tile.ravel()[flat]
                rows, columns = np.divmod(flat, tile.shape[1])
                rows, columns = rows + row, columns + column  # positions in sorted order
                if other is None:
                    above = rows < columns  # each pair once
                    rows, columns = row_order[rows], column_order[columns]
                    rows, columns = np.minimum(rows, columns), np.maximum(rows, columns)
                else:
                    rows, columns, scores, above = _one_direction(
                        whole, other, row_order[rows], column_order[columns], gate)
                found.append(screen(rows[above], columns[above], scores[above]))
            return found

        for found in in_order(block_pairs, range(0, len(unit), TILE_ROWS)):
            yield from found


class _Index:
    """The hashing search (`lsh`) on the rows' sketches: float32 [N, <= SKETCH_DIMENSIONS], the
    rows themselves or their projection on the top principal axes of a sample of both
    (orthonormal, so no pair moves further apart); one condition per alternative."""

    def __init__(self, unit: Rows, other: Optional[Rows], reach: float,
                 alternatives: Sequence[tuple[Rows, float]]) -> None:
        self.unit, self.other = unit, other
        matrices = [unit] if other is None else [unit, other]
        self.sketches: Optional[list[_Sketch]] = None
        if unit.shape[1] <= SKETCH_DIMENSIONS:
            sketches: list[Rows] = [np.asarray(matrix[:], np.float32) for matrix in matrices]
        else:
            sample = np.concatenate([np.asarray(matrix[sample_rows(len(matrix))], np.float32)
                                     for matrix in matrices])
            axes = top_axes(sample, SKETCH_DIMENSIONS)
            self.sketches = [_Sketch(matrix, axes) for matrix in matrices]
            sketches = list(self.sketches)
        main = lsh.Part(sketches[0], sketches[1] if other is not None else None, reach)
        self.reach = reach
        self.conditions = [[main, lsh.Part(rows, None, _reach(gate))]
                           for rows, gate in alternatives] or [[main]]
        rng = np.random.default_rng(SEED)
        self.plans = [lsh.plan(parts, rng) for parts in self.conditions]
        self.cost = sum(shape.cost for shape in self.plans)

    def pairs(self, gate: float, screen: _Screen,
              contending: Optional[lsh.Filter] = None) -> Iterator[_Scored]:
        """`screen`(rows, columns, scores) of the gated pairs among the index's candidates;
        `contending` (`Nearest.contending`) drops the losing ones as early as they are scored."""
        unit, other = self.unit, self.other

        def block_scores(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
            if other is None:
                return np.asarray(unit[rows], np.float32) @ np.asarray(unit[columns],
                                                                        np.float32).T
            return np.maximum(
                np.asarray(unit[rows], np.float32) @ np.asarray(other[columns], np.float32).T,
                np.asarray(other[rows], np.float32) @ np.asarray(unit[columns], np.float32).T)

        def exact_scores(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
            scores = _pair_products(unit, unit if other is None else other, rows, columns)
            if other is not None:
                scores = np.maximum(scores, _pair_products(other, unit, rows, columns))
            return scores

        # Projections on orthonormal axes bring no pair further apart, so a candidate whose
        # sketches' prefixes are further apart than `reach` (with a margin for rounding) cannot
        # pass the gate and is not scored: wide rows are costly (at a million images they are
        # computed from the thumbnails pair by pair) and most candidates are that far apart.
        def pair_scores(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
            if self.sketches is None or not all(sketch.complete() for sketch in self.sketches):
                return exact_scores(rows, columns)
            scores = np.full(len(rows), -np.inf, np.float32)  # below any gate
            close = np.flatnonzero(_within([sketch.prefix for sketch in self.sketches], rows,
                                           columns, self.reach))
            scores[close] = exact_scores(rows[close], columns[close])
            return scores

        for rows, columns, scores in lsh.close_pairs(self.conditions, block_scores, pair_scores,
                                                     gate, SEED, self.plans, contending):
            yield screen(rows, columns, scores)


def _reach(gate: float) -> float:
    """How far apart two rows of length 1 with cosine `gate` can be: sqrt(2 - 2 gate)."""
    return float(np.sqrt(max(0.0, 2.0 - 2.0 * gate)))


class _Sketch:
    """Rows of a wide `Rows` projected on the sketch axes (float32 [N, K]), computed when taken:
    a million rows' 64-wide sketches are 256 MB a side, needed once for the index's codes. A
    slice is computed by `_products` (BLOCK_ROWS rows at a time from its start); the first
    PREFIX_DIMENSIONS columns of every row taken by a slice are kept in `prefix` (the codes
    take every row once) for `_within`."""

    def __init__(self, matrix: Rows, axes: np.ndarray) -> None:
        self.matrix, self.columns = matrix, axes.T
        self.shape = (len(matrix), axes.shape[0])
        self.prefix = np.zeros((len(matrix), min(PREFIX_DIMENSIONS, axes.shape[0])), np.float32)
        self._taken = np.zeros(len(matrix), bool)

    def __len__(self) -> int:
        return len(self.matrix)

    def __getitem__(self, index: Any) -> np.ndarray:
        if not isinstance(index, slice):
            return np.asarray(self.matrix[index], np.float32) @ self.columns
        start, stop, step = index.indices(len(self))
        if step != 1:
            return self[np.arange(start, stop, step)]
        rows = _products(self.matrix, self.columns, start, stop)
        self.prefix[start:stop] = rows[:, :self.prefix.shape[1]]
        self._taken[start:stop] = True
        return rows

    def complete(self) -> bool:
        """Whether `prefix` holds every row."""
        return bool(self._taken.all())


def _within(sketches: Sequence[np.ndarray], rows: np.ndarray, columns: np.ndarray,
            reach: float) -> np.ndarray:
    """bool [P]: whether rows[p]'s sketch lies within `reach` of columns[p]'s (one sketch), or
    either one's within reach of the other's other sketch (two: a row's unit and other
    projections), give or take SKETCH_MARGIN: False only for pairs that cannot score `reach`'s
    gate, whatever rounding the exact scores see."""
    limit = reach * reach + SKETCH_MARGIN
    close = np.empty(len(rows), bool)
    first, second = sketches[0], sketches[-1]
    for start in range(0, len(rows), PAIR_CHUNK):
        row, column = rows[start:start + PAIR_CHUNK], columns[start:start + PAIR_CHUNK]
        forward = first[row] - second[column]
        near = np.einsum("ij,ij->i", forward, forward) <= limit
        if len(sketches) > 1:
            backward = second[row] - first[column]
            near |= np.einsum("ij,ij->i", backward, backward) <= limit
        close[start:start + PAIR_CHUNK] = near
    return close


def _products(matrix: Rows, columns: np.ndarray, start: int = 0,
              stop: Optional[int] = None) -> np.ndarray:
    """float32 `matrix[start:stop] @ columns` ([N] or [N, K]), BLOCK_ROWS rows of `matrix` at a
    time from `start`, each written into the result (a list of blocks, then their
    concatenation, then a float32 copy held three times the result: 768 MB for a 64-wide sketch
    of a million rows)."""
    stop = len(matrix) if stop is None else stop
    products = np.empty((max(stop - start, 0), *columns.shape[1:]), np.float32)
    for block in range(start, stop, BLOCK_ROWS):
        end = min(block + BLOCK_ROWS, stop)
        products[block - start:end - start] = (
            np.asarray(matrix[block:end], np.float32) @ columns)
    return products


def _pair_products(first: Rows, second: Rows, rows: np.ndarray,
                   columns: np.ndarray) -> np.ndarray:
    """float32 [P]: first[rows[p]] . second[columns[p]], PAIR_CHUNK pairs' rows gathered at a
    time (rows computed on demand are 1 KB each: a million pairs at once took gigabytes)."""
    products = np.empty(len(rows), np.float32)
    for start in range(0, len(rows), PAIR_CHUNK):
        stop = start + PAIR_CHUNK
        products[start:stop] = np.einsum("ij,ij->i",
                                         np.asarray(first[rows[start:stop]], np.float32),
                                         np.asarray(second[columns[start:stop]], np.float32))
    return products


def _main_axis(matrices: Sequence[Rows], steps: int = 16) -> np.ndarray:
    """float32 [D], length 1: about the first principal axis of an evenly spaced sample of rows
    (the direction the rows spread most along, so sorting by it separates them best), by a few
    power-iteration steps from the sample's longest centred row. Only the search's speed depends
    on how close it comes: `similar_pairs` skips no pair for any axis of length 1."""
    sample = np.concatenate([np.asarray(matrix[sample_rows(len(matrix))], np.float32)
                             for matrix in matrices])
    sample = sample - sample.mean(axis=0)
    axis = sample[np.argmax(np.einsum("ij,ij->i", sample, sample))] if len(sample) else None
    for _ in range(steps):
        if axis is None or not np.any(axis):
            break
        axis = sample.T @ (sample @ axis)
        axis /= np.linalg.norm(axis)
    if axis is None or not np.any(axis):  # every sampled row the same: any axis will do
        axis = np.zeros(matrices[0].shape[1], np.float32)
        axis[:1] = 1.0
    return axis.astype(np.float32)


def _one_direction(unit: np.ndarray, other: np.ndarray, rows: np.ndarray, columns: np.ndarray,
                   gate: float) -> tuple[np.ndarray, ...]:
    """For ordered pairs (i, j) with unit_i . other_j >= gate (from a tile): each as (first,
    second, score, mask) with its score max(unit_i . other_j, other_i . unit_j), masked so that
    each unordered pair counts once, from the direction that scores best (both are gathered, so
    the two directions agree exactly)."""
    forward = _pair_products(unit, other, rows, columns)
    backward = _pair_products(other, unit, rows, columns)
    best = (forward > backward) | ((forward == backward) & (rows < columns))
    scores = np.maximum(forward, backward)
    mask = best & (rows != columns) & (scores >= gate)
    return np.minimum(rows, columns), np.maximum(rows, columns), scores, mask
