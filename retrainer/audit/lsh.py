"""Audit helper: candidate pairs of close rows from locality-sensitive hashing, for large sets.

Each of L tables hashes a row to a bucket by K random projections cut into slots of one width
(p-stable LSH for Euclidean distance, Datar et al. 2004): two rows at distance c share a slot
with probability `slot_probability(c / width)`, so they share a table's bucket with that to the
K-th power, and are found when they share a bucket in any table. A pair that must be close in
several descriptors at once (`Part`s: e.g. the spectrum AND the vectors) is hashed on each of
them in the same key, which strangers close in one only rarely share; a condition with
alternatives (this OR that) gets tables for each. The caller scores every candidate exactly, so
the index only decides which pairs are looked at. K, L and the widths are chosen from the rows
themselves (a sample of random pairs: how many strangers share a bucket) so that a pair at every
part's `reach` is missed with probability at most MISS; closer pairs far less (docs/audit.md
gives the measured recall). Cost: L x (K projections per row + the bucket's members), about
N log N; memory: two uint32 codes per row and table.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
from scipy.special import ndtr

from retrainer.audit._threads import in_order
from retrainer.audit.neighbours import Rows

log = logging.getLogger(__name__)

MISS = 1e-3  # chance that a pair exactly at `reach` shares no bucket in any table
MAX_TABLES = 32
MAX_PROJECTIONS = 32  # per table
WIDTHS = (2.0, 4.0, 8.0, 16.0)  # slot widths tried, in reaches
SAMPLE_PAIRS = 4096  # random pairs the strangers' sharing rate is estimated from
CHUNK_PAIRS = 1 << 18  # candidate pairs handled at a time
BLOCK_PAIRS = 256  # a bucket with this many candidate pairs is scored as one matrix product
_BLOCK_ROWS = 8192
_TILE = 2048  # rows and columns of a bucket scored at a time


@dataclasses.dataclass(frozen=True)
class Part:
    """One descriptor a pair must be close in: rows `points` [N, D] float32, and `others` (None:
    `points`) for pairs scored one's points against the other's others; `reach`: the largest
    distance of a pair that must be found. Rows are taken a block at a time (the codes) or a
    few hundred at a time (the plan's sample): they may be computed when taken (`Rows`)."""

    points: Rows
    others: Optional[Rows]
    reach: float

    def distances(self, firsts: np.ndarray, seconds: np.ndarray) -> np.ndarray:
        """float64 [P]: |points_first - others_second|."""
        others = self.points if self.others is None else self.others
        return np.linalg.norm(np.asarray(self.points[firsts], np.float64)
                              - np.asarray(others[seconds], np.float64), axis=1)


@dataclasses.dataclass(frozen=True)
class Plan:
    """One condition's tables: `tables` tables of `projections[p]` projections of part p, its
    slots `widths[p]` wide; the resulting chance that a pair at every part's reach is missed,
    the candidate pairs expected (over all tables, before the repeats are dropped), and the
    expected cost in row products (projections and candidates: blocked matrix products)."""

    tables: int
    projections: tuple[int, ...]
    widths: tuple[float, ...]
    miss: float
    candidates: float
    cost: float


def slot_probability(ratio: np.ndarray | float) -> np.ndarray:
    """Chance that two points `ratio` x width apart share a slot of one random projection
    (Gaussian direction, uniform offset): 1 - 2 Phi(-1/r) - 2 r / sqrt(2 pi) (1 - e^(-1/2r^2))."""
    r = np.maximum(np.asarray(ratio, np.float64), 1e-12)
    return np.clip(1.0 - 2.0 * ndtr(-1.0 / r)
                   - 2.0 * r / math.sqrt(2.0 * math.pi) * (1.0 - np.exp(-0.5 / (r * r))), 0, 1)


def plan(parts: Sequence[Part], rng: np.random.Generator) -> Plan:
    """The cheapest tables (slot width in reaches, projections per part, tables) whose miss
    chance at the parts' reaches is at most MISS (or the lowest reachable with MAX_TABLES),
    costed as tables x rows x (projections + 1 + the strangers expected in a row's bucket),
    the strangers' distances sampled from the rows."""
    count = len(parts[0].points)
    reaches = [max(part.reach, 1e-6) for part in parts]
    if count < 2:  # no pairs
        return Plan(1, (1,) * len(parts), tuple(reaches), 0.0, 0.0, 0.0)
    firsts, seconds = rng.integers(count, size=(2, min(SAMPLE_PAIRS, count * count)))
    distances = [part.distances(firsts, seconds) for part in parts]
    options = []
    for slots in WIDTHS:
        near = float(slot_probability(1.0 / slots))
        logs = [np.log(np.maximum(slot_probability(d / (slots * r)), 1e-300))
                for d, r in zip(distances, reaches)]
        for projections in itertools.product(range(MAX_PROJECTIONS + 1), repeat=len(parts)):
            if sum(projections) == 0 or sum(projections) > MAX_PROJECTIONS:
                continue
            found = near ** sum(projections)  # chance that a pair at the reaches shares a table
            tables = (1 if found >= 1.0 else MAX_TABLES if found <= 0.0
                      else min(MAX_TABLES, math.ceil(math.log(MISS) / math.log1p(-found))))
            miss = (1.0 - found) ** tables
            shared = np.exp(sum(k * log for k, log in zip(projections, logs)))
            sharing = count * float(np.mean(shared))  # strangers per row and table
            cost = tables * count * (sum(projections) + 1.0 + sharing)
            options.append((max(miss, MISS), cost, Plan(
                tables, projections, tuple(slots * r for r in reaches), miss,
                tables * count * sharing / 2, cost)))
    return min(options, key=lambda option: option[:2])[2]


Scores = Callable[[np.ndarray, np.ndarray], np.ndarray]
# (rows, columns, scores) -> bool [P]: the gated pairs worth keeping (e.g. `Nearest.contending`)
Filter = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def close_pairs(conditions: Sequence[Sequence[Part]], block_scores: Scores, pair_scores: Scores,
                gate: float, seed: int = 0, plans: Optional[Sequence[Plan]] = None,
                wanted: Optional[Filter] = None,
                ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each unordered pair {i, j} (i != j) that shares a bucket of some table and scores at
    least `gate`, once: a pair close in every part of any one condition is looked at with
    probability at least 1 - MISS. A bucket's candidates are scored as one block (a matrix
    product) when it brings at least BLOCK_PAIRS of them, pair by pair otherwise.

    Args:
        conditions: alternatives, each a list of `Part`s (of the same N rows) a pair must be
            close in together.
        block_scores: (rows int64 [A], columns int64 [B]) -> float32 [A, B], the score of each
            pair (a row's points against a column's others, and the other way: symmetric).
        pair_scores: (rows int64 [P], columns int64 [P]) -> float32 [P], the same pair by pair.
        gate: the smallest score yielded.
        seed: draws the projections.
        plans: each condition's tables (None: `plan` of each, from `seed`).
        wanted: drops gated pairs before the (costlier) test for repeats across tables, on
            the worker threads; None keeps all. It must drop a pair whenever it would drop it
            later (a cut-off that only rises), so that no pair it drops is yielded in any table.

    Yields:
        (first int64 [G], second int64 [G], score float32 [G]), first < second.
    """
    count = len(conditions[0][0].points)
    if count < 2:
        return
    rng = np.random.default_rng(seed)
    plans = plans or [plan(parts, rng) for parts in conditions]
    log.info("Hashing %d rows: %s.", count, plans)
    # Each condition's codes written into one array as they are made (a list of them and its
    # concatenation held twice the codes: 480 MB at a million rows and 60 tables).
    symmetric = all(part.others is None for parts in conditions for part in parts)
    codes = np.empty((count, sum(shape.tables for shape in plans)), np.uint32)
    other_codes = codes if symmetric else np.empty_like(codes)
    column = 0
    for parts, shape in zip(conditions, plans):
        _codes(parts, shape, rng, codes[:, column:column + shape.tables],
               None if symmetric else other_codes[:, column:column + shape.tables])
        column += shape.tables

    def table_pairs(table: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        found = []
        for rows, columns, scores in _table_candidates(codes, other_codes, table, block_scores,
                                                       pair_scores, gate):
            if len(rows) and wanted is not None:
                chosen = wanted(rows, columns, scores)
                rows, columns, scores = rows[chosen], columns[chosen], scores[chosen]
            if len(rows):  # most buckets hold none
                new = _first_sightings(rows, columns, codes, other_codes, table)
                found.append((np.minimum(rows, columns)[new], np.maximum(rows, columns)[new],
                              scores[new]))
        return found

    # Tables on every CPU (matrix products and gathers release the GIL), yielded in order.
    for found in in_order(table_pairs, range(codes.shape[1])):
        yield from found


def _codes(parts: Sequence[Part], shape: Plan, rng: np.random.Generator, codes: np.ndarray,
           other_codes: Optional[np.ndarray]) -> None:
    """Write each row's bucket in each table into `codes` (uint32 [N, tables], from its points'
    side) and `other_codes` (from its others' side; None: a symmetric index): its slot
    numbers mixed. Written a block of rows at a time: no whole [N, tables] array besides."""
    projections = [(rng.standard_normal((part.points.shape[1], shape.tables * k), np.float32),
                    rng.uniform(0, width, shape.tables * k).astype(np.float32), k, width)
                   for part, k, width in zip(parts, shape.projections, shape.widths)]
    mixers = (rng.integers(1, 2**63, sum(shape.projections), np.int64) | 1).view(np.uint64)
    count = len(parts[0].points)

    def slot_numbers(rows: Rows, start: int, stop: int, directions: np.ndarray,
                     offsets: np.ndarray, k: int, width: float) -> np.ndarray:
        if not k:  # a part these tables do not hash: its rows (maybe computed) not taken
            return np.zeros((stop - start, shape.tables, 0), np.int64)
        return (np.floor((np.asarray(rows[start:stop], np.float32) @ directions + offsets)
                         / width).astype(np.int64).reshape(stop - start, shape.tables, k))

    def side(others: bool, out: np.ndarray) -> None:
        for start in range(0, count, _BLOCK_ROWS):
            stop = min(start + _BLOCK_ROWS, count)
            slots = [slot_numbers(part.others if others and part.others is not None
                                  else part.points, start, stop, *projection)
                     for part, projection in zip(parts, projections)]
            mixed = (np.concatenate(slots, axis=2).view(np.uint64) * mixers).sum(
                axis=2, dtype=np.uint64)  # wraps modulo 2**64
            out[start:stop] = (mixed ^ (mixed >> np.uint64(32))).astype(np.uint32)

    side(False, codes)
    if other_codes is not None:
        if any(part.others is not None for part in parts):
            side(True, other_codes)
        else:
            other_codes[:] = codes


def _table_candidates(codes: np.ndarray, other_codes: np.ndarray, table: int,
                      block_scores: Scores, pair_scores: Scores, gate: float,
                      ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(rows, columns, scores) of the ordered pairs (a row's points with a column's others)
    sharing a bucket of `table` and scoring at least `gate`, with repeats across tables."""
    keys, other_keys = codes[:, table], other_codes[:, table]
    order = np.argsort(keys, kind="stable")
    other_order = order if codes is other_codes else np.argsort(other_keys, kind="stable")
    ordered, other_ordered = keys[order], other_keys[other_order]
    buckets, starts, counts = np.unique(ordered, return_index=True, return_counts=True)
    other_starts = np.searchsorted(other_ordered, buckets, "left")
    other_counts = np.searchsorted(other_ordered, buckets, "right") - other_starts
    pairs = counts * other_counts
    for bucket in np.flatnonzero(pairs >= BLOCK_PAIRS):
        rows = order[starts[bucket]:starts[bucket] + counts[bucket]]
        columns = other_order[other_starts[bucket]:other_starts[bucket] + other_counts[bucket]]
        for start in range(0, len(rows), _TILE):  # tiles: bounded memory in any bucket
            for column in range(0, len(columns), _TILE):
                block = block_scores(rows[start:start + _TILE], columns[column:column + _TILE])
                flat = np.flatnonzero(block >= gate)  # 15x faster than a 2-D np.nonzero
                tile_rows, tile_columns = np.divmod(flat, block.shape[1])
                yield (rows[start + tile_rows], columns[column + tile_columns],
                       block.ravel()[flat])
    small = np.flatnonzero((pairs < BLOCK_PAIRS) & (pairs > (counts if codes is other_codes
                                                             else 0)))
    rows, column_starts, sizes = _small_bucket_rows(order, starts, counts, other_starts,
                                                    other_counts, small)
    # Only these (int32 while rows fit) and `other_order` are held while the chunks are
    # scored, on each table's thread: a million rows' bucket arrays were ~100 MB a thread.
    del order, ordered, other_ordered, buckets, starts, counts, other_starts, other_counts
    del pairs, small
    ends = np.cumsum(sizes, dtype=np.int64)
    begin = 0
    while begin < len(rows):  # rows[begin:stop] bring at most CHUNK_PAIRS pairs
        done = ends[begin - 1] if begin else 0
        stop = max(begin + 1, int(np.searchsorted(ends, done + CHUNK_PAIRS, "right")))
        chunk = sizes[begin:stop]
        firsts = np.repeat(rows[begin:stop].astype(np.int64), chunk)
        within = np.arange(len(firsts)) - np.repeat(np.cumsum(chunk, dtype=np.int64) - chunk,
                                                    chunk)
        seconds = other_order[np.repeat(column_starts[begin:stop].astype(np.int64), chunk)
                              + within]
        scores = pair_scores(firsts, seconds)
        chosen = scores >= gate
        yield firsts[chosen], seconds[chosen], scores[chosen]
        begin = stop


def _small_bucket_rows(order: np.ndarray, starts: np.ndarray, counts: np.ndarray,
                       other_starts: np.ndarray, other_counts: np.ndarray,
                       small: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every row of the `small` buckets with its bucket's columns: (row, where its bucket's
    columns start in the other side's order, how many there are), int32 below 2^31 rows."""
    index = np.int32 if len(order) < 2**31 else np.int64
    members = np.repeat(small, counts[small])
    rows = order[np.repeat(starts[small], counts[small])
                 + np.arange(len(members)) - np.repeat(np.cumsum(counts[small]) - counts[small],
                                                        counts[small])]
    return (rows.astype(index), other_starts[members].astype(index),
            other_counts[members].astype(index))


def _first_sightings(firsts: np.ndarray, seconds: np.ndarray, codes: np.ndarray,
                     other_codes: np.ndarray, table: int) -> np.ndarray:
    """bool [P]: which of the ordered pairs sharing `table`'s bucket (points_first with
    others_second) are seen here for the first time: not the same row, not in an earlier table
    (either way round), and, when both ways share this table's bucket, the one with
    first < second."""
    backward = codes[seconds, table] == other_codes[firsts, table]
    chosen = (firsts != seconds) & ~(backward & (firsts > seconds))
    if table:
        first, second = firsts[chosen], seconds[chosen]
        shared = codes[first, :table] == other_codes[second, :table]
        if codes is not other_codes:  # symmetric: the other way round is the same test
            shared |= codes[second, :table] == other_codes[first, :table]
        chosen[chosen] = ~shared.any(axis=1)
    return chosen
