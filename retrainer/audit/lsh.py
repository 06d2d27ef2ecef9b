"""Audit helper: candidate pairs of close rows from locality-sensitive hashing, for large sets.

Each of L tables hashes a row to a bucket by K random projections cut into slots of one width
(p-stable LSH for Euclidean distance, Datar et al. 2004): two rows at distance c share a slot
with probability `slot_probability(c / width)`, so they share a table's bucket with that to the
K-th power, and are found when they share a bucket in any table. The caller scores every
candidate exactly, so the index only decides which pairs are looked at. K, L and the width are
chosen from the rows themselves (a sample of random pairs: how many strangers share a bucket)
so that a pair at the caller's distance `reach` is missed with probability at most MISS; closer
pairs far less (docs/audit.md gives the measured recall). Cost: L x (K projections per row +
the bucket's members), about N log N; memory: two uint32 codes per row and table.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Iterator, Optional

import numpy as np
from scipy.special import ndtr

log = logging.getLogger(__name__)

MISS = 1e-3  # chance that a pair exactly at `reach` shares no bucket in any table
MAX_TABLES = 32
MAX_PROJECTIONS = 32  # per table
WIDTHS = (2.0, 4.0, 8.0, 16.0)  # slot widths tried, in reaches
SAMPLE_PAIRS = 4096  # random pairs the strangers' sharing rate is estimated from
CHUNK_PAIRS = 1 << 20  # candidate pairs handled at a time
_BLOCK_ROWS = 8192


@dataclasses.dataclass(frozen=True)
class Plan:
    """The index's shape: `tables` tables of `projections` projections, slots `width` wide;
    the resulting chance that a pair exactly `reach` apart is missed, and the number of
    candidate pairs expected (over all tables, before the repeats are dropped)."""

    tables: int
    projections: int
    width: float
    miss: float
    candidates: float


def slot_probability(ratio: np.ndarray | float) -> np.ndarray:
    """Chance that two points `ratio` x width apart share a slot of one random projection
    (Gaussian direction, uniform offset): 1 - 2 Phi(-1/r) - 2 r / sqrt(2 pi) (1 - e^(-1/2r^2))."""
    r = np.maximum(np.asarray(ratio, np.float64), 1e-12)
    return np.clip(1.0 - 2.0 * ndtr(-1.0 / r)
                   - 2.0 * r / math.sqrt(2.0 * math.pi) * (1.0 - np.exp(-0.5 / (r * r))), 0, 1)


def plan(points: np.ndarray, reach: float, rng: np.random.Generator) -> Plan:
    """The cheapest (width, projections, tables) whose miss chance at `reach` is at most MISS
    (or the lowest reachable with MAX_TABLES), costed as tables x (projections + 4 x the
    strangers expected in a row's bucket), the strangers' distances sampled from `points`."""
    count, reach = len(points), max(reach, 1e-6)
    if count < 2:  # no pairs
        return Plan(1, 1, reach, 0.0, 0.0)
    firsts, seconds = rng.integers(count, size=(2, min(SAMPLE_PAIRS, count * count)))
    distances = np.linalg.norm(np.asarray(points[firsts], np.float64)
                               - np.asarray(points[seconds], np.float64), axis=1)
    options = []
    for slots in WIDTHS:
        width = slots * reach
        near = float(slot_probability(1.0 / slots))
        strangers = slot_probability(distances / width)
        for projections in range(1, MAX_PROJECTIONS + 1):
            found = near ** projections  # chance that the pair at `reach` shares one table
            tables = (1 if found >= 1.0 else MAX_TABLES if found <= 0.0
                      else min(MAX_TABLES, math.ceil(math.log(MISS) / math.log1p(-found))))
            miss = (1.0 - found) ** tables
            sharing = count * float(np.mean(strangers ** projections))  # per row and table
            cost = tables * (projections + 4.0 * sharing)
            options.append((max(miss, MISS), cost, Plan(tables, projections, width, miss,
                                                         tables * count * sharing / 2)))
    return min(options, key=lambda option: option[:2])[2]


def candidate_pairs(points: np.ndarray, others: Optional[np.ndarray], reach: float,
                    seed: int = 0, shape: Optional[Plan] = None,
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Each unordered pair {i, j} (i != j) with points_i and others_j, or points_j and
    others_i, in one bucket of some table, once, in chunks of at most CHUNK_PAIRS.

    Args:
        points: float32 [N, D].
        others: float32 [N, D], or None for `points` itself (then pairs of close points).
        reach: the distance up to which pairs should be found (see the module docstring).
        seed: draws the projections (and the plan's sample).
        shape: the index's plan (None: `plan(points, reach, ...)`).

    Yields:
        (first int64 [P], second int64 [P]), first < second.
    """
    count = len(points)
    if count < 2:
        return
    rng = np.random.default_rng(seed)
    shape = shape or plan(points, reach, rng)
    log.info("Hashing %d rows: %s.", count, shape)
    directions = rng.standard_normal((points.shape[1], shape.tables * shape.projections),
                                     np.float32)
    offsets = rng.uniform(0, shape.width, shape.tables * shape.projections).astype(np.float32)
    mixers = (rng.integers(1, 2**63, shape.projections, np.int64) | 1).view(np.uint64)
    codes = _codes(points, directions, offsets, shape, mixers)
    other_codes = codes if others is None else _codes(others, directions, offsets, shape, mixers)
    for table in range(shape.tables):
        yield from _table_pairs(codes, other_codes, table)


def _codes(points: np.ndarray, directions: np.ndarray, offsets: np.ndarray, shape: Plan,
           mixers: np.ndarray) -> np.ndarray:
    """uint32 [N, tables]: each row's bucket in each table (its K slot numbers mixed)."""
    codes = np.empty((len(points), shape.tables), np.uint32)
    for start in range(0, len(points), _BLOCK_ROWS):
        block = np.asarray(points[start:start + _BLOCK_ROWS], np.float32)
        slots = np.floor((block @ directions + offsets) / shape.width).astype(np.int64)
        slots = slots.reshape(len(block), shape.tables, shape.projections).view(np.uint64)
        mixed = (slots * mixers).sum(axis=2, dtype=np.uint64)  # wraps modulo 2**64
        codes[start:start + len(block)] = (mixed ^ (mixed >> np.uint64(32))).astype(np.uint32)
    return codes


def _table_pairs(codes: np.ndarray, other_codes: np.ndarray,
                 table: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The pairs that share a bucket in `table` and in no earlier table (so that each pair is
    yielded once over all tables); in one table, the direction with first < second when both
    share it."""
    keys, other_keys = codes[:, table], other_codes[:, table]
    order = np.argsort(other_keys, kind="stable")
    ordered = other_keys[order]
    starts = np.searchsorted(ordered, keys, "left")
    counts = np.searchsorted(ordered, keys, "right") - starts
    rows = np.flatnonzero(counts > (1 if codes is other_codes else 0))
    ends = np.cumsum(counts[rows])
    begin = 0
    while begin < len(rows):
        # rows[begin:stop] bring at most CHUNK_PAIRS candidates (at least one row's)
        done = ends[begin - 1] if begin else 0
        stop = max(begin + 1, int(np.searchsorted(ends, done + CHUNK_PAIRS, "right")))
        chunk = rows[begin:stop]
        sizes = counts[chunk]
        firsts = np.repeat(chunk, sizes)
        within = np.arange(len(firsts)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        seconds = order[np.repeat(starts[chunk], sizes) + within]
        yield _first_sightings(firsts, seconds, codes, other_codes, table)
        begin = stop


def _first_sightings(firsts: np.ndarray, seconds: np.ndarray, codes: np.ndarray,
                     other_codes: np.ndarray, table: int) -> tuple[np.ndarray, np.ndarray]:
    """Of the ordered pairs sharing `table`'s bucket (points_first with others_second), those
    seen here for the first time, as (smaller, larger)."""
    backward = codes[seconds, table] == other_codes[firsts, table]
    chosen = (firsts != seconds) & ~(backward & (firsts > seconds))
    firsts, seconds = firsts[chosen], seconds[chosen]
    if table:
        earlier = ((codes[firsts, :table] == other_codes[seconds, :table])
                   | (codes[seconds, :table] == other_codes[firsts, :table])).any(axis=1)
        firsts, seconds = firsts[~earlier], seconds[~earlier]
    return (np.minimum(firsts, seconds).astype(np.int64),
            np.maximum(firsts, seconds).astype(np.int64))
