"""The near-pair search's hashing index (`audit.lsh`) against the exact search (`audit.pairs`).

The index is probabilistic: a pair exactly at the gate is missed with probability at most
`lsh.MISS`. What must always hold: no pair it returns fails the gate, none is returned twice,
rows with the same descriptor are always found (they share every bucket), and on degenerate
arrays (0, 1 or 2 rows, all rows equal, zero variance) it agrees with the exact search. The
miss bound itself is measured on many pairs drawn exactly at the gate's distance.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from retrainer.audit import duplicates, lazy_rows, lsh, pairs
from retrainer.audit.neighbours import unit_rows

SETTINGS = settings(max_examples=60, deadline=None)


def pair_set(found: tuple[np.ndarray, np.ndarray]) -> set[tuple[int, int]]:
    return set(zip(found[0].tolist(), found[1].tolist()))


def candidates(conditions: list[list[lsh.Part]]) -> list[tuple[int, int]]:
    """Every candidate pair of the index (scores of 1: none is gated away)."""
    def block(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        return np.ones((len(rows), len(columns)), np.float32)

    def each(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        return np.ones(len(rows), np.float32)

    return [pair for first, second, _ in lsh.close_pairs(conditions, block, each, gate=0.5)
            for pair in zip(first.tolist(), second.tolist())]


@st.composite
def row_sets(draw, max_rows: int = 40) -> np.ndarray:
    """float32 [N, D] rows: few distinct values (so many equal rows and ties), some all-zero
    (zero variance), or all the same; N from 0."""
    count = draw(st.integers(0, max_rows))
    width = draw(st.integers(1, 12))
    values = st.sampled_from([0.0, 1.0, -1.0, 0.5, 2.0])
    rows = draw(arrays(np.float32, (count, width), elements=values))
    if count and draw(st.booleans()):
        rows[:] = rows[0]
    return rows


@SETTINGS
@given(row_sets(), st.sampled_from([0.5, 0.9, 0.99]), st.sampled_from([None, 1, 3]))
def test_index_equals_the_exact_search_on_degenerate_rows(rows, gate, limit):
    """Rows made of few values: equal rows (found with certainty, in every table's bucket) or
    rows whose cosine is far from the gate (for these gates: at most 0.95 unless equal); the
    index must give the exact search's pairs.
    (A cosine within float32 rounding of the gate may fall either way: the exact search's
    matrix products and the index's pair products round differently.)"""
    unit = unit_rows(rows)
    cosines = unit @ unit.T
    assume(not np.any(np.abs(cosines - gate) < 1e-4))
    exact = pairs.similar_pairs(unit, gate, limit=limit, method="exact")
    hashed = pairs.similar_pairs(unit, gate, limit=limit, method="index")
    for found in (exact, hashed):
        assert all(first < second for first, second in pair_set(found))
    if limit is None:
        assert pair_set(hashed) == pair_set(exact)
    else:  # ties (equal rows) may keep other partners: each row's best score is the same
        assert best_scores(cosines, hashed) == best_scores(cosines, exact)


def best_scores(cosines: np.ndarray, found: tuple[np.ndarray, np.ndarray]) -> dict[int, float]:
    best: dict[int, float] = {}
    for first, second in pair_set(found):
        for row in (first, second):
            best[row] = max(best.get(row, -2.0), round(float(cosines[first, second]), 4))
    return best


@SETTINGS
@given(row_sets(), st.booleans())
def test_candidates_are_distinct_ordered_pairs_and_include_equal_rows(rows, cross):
    others = rows[::-1].copy() if cross else None
    found = candidates([[lsh.Part(rows, others, 0.1)]])
    assert len(found) == len(set(found))
    assert all(0 <= first < second < len(rows) for first, second in found)
    opposite = rows if others is None else others
    equal = {(i, j) for i in range(len(rows)) for j in range(i + 1, len(rows))
             if np.array_equal(rows[i], opposite[j]) or np.array_equal(rows[j], opposite[i])}
    assert equal <= set(found)


@SETTINGS
@given(st.integers(2, 300), st.integers(2, 48), st.sampled_from([0.9, 0.97, 0.99]),
       st.integers(0, 2**16))
def test_index_returns_only_gated_pairs_and_finds_close_copies(count, width, gate, seed):
    """Unrelated rows plus a copy of every tenth one moved 1/4 of the gate's reach: every copy
    pair is found (its miss chance is far below MISS), every returned pair passes the gate."""
    rng = np.random.default_rng(seed)
    unit = unit_rows(rng.standard_normal((count, width)).astype(np.float32))
    reach = np.sqrt(2 - 2 * gate)
    originals = np.arange(0, count, 10)
    nudge = unit_rows(rng.standard_normal((len(originals), width)).astype(np.float32))
    copies = unit_rows(unit[originals] + 0.25 * reach * nudge)
    rows = np.concatenate([unit, copies])
    hashed = pair_set(pairs.similar_pairs(rows, gate, method="index"))
    exact = pair_set(pairs.similar_pairs(rows, gate, method="exact"))
    assert hashed <= exact
    copy_pairs = {(int(original), count + index) for index, original in enumerate(originals)}
    assert copy_pairs & exact <= hashed


def test_measured_miss_rate_at_the_gate_is_within_the_bound():
    """20,000 pairs exactly at the gate's distance among 40,000 unrelated rows: the share the
    index misses is within 3x lsh.MISS (its bound for a pair at the gate)."""
    rng = np.random.default_rng(0)
    gate, width, count = 0.983, 32, 20_000
    reach = float(np.sqrt(2 - 2 * gate))
    first = unit_rows(rng.standard_normal((count, width)).astype(np.float32))
    step = rng.standard_normal((count, width)).astype(np.float32)
    step -= np.einsum("ij,ij->i", step, first)[:, None] * first  # orthogonal to `first`
    angle = np.arccos(gate)  # second = cos(a) first + sin(a) step: cosine exactly `gate`
    second = np.cos(angle) * first + np.sin(angle) * unit_rows(step)
    rows = np.concatenate([first, second]).astype(np.float32)
    found = set(candidates([[lsh.Part(rows, None, reach * 1.0001)]]))
    missed = sum((index, count + index) not in found for index in range(count))
    assert missed <= 3 * lsh.MISS * count + 3


def test_slot_probability_falls_from_one_with_distance():
    ratios = np.array([0.0, 0.01, 0.1, 0.5, 1.0, 4.0])
    chances = lsh.slot_probability(ratios)
    assert chances[0] == pytest.approx(1.0) and np.all(np.diff(chances) < 0)
    # Monte Carlo: a Gaussian direction, a uniform offset, slots of width 1
    rng = np.random.default_rng(1)
    distance = 0.5
    shifts = rng.standard_normal(200_000) * distance
    offsets = rng.uniform(0, 1, 200_000)
    shared = np.floor(offsets) == np.floor(offsets + shifts)
    assert shared.mean() == pytest.approx(float(lsh.slot_probability(distance)), abs=0.01)


def test_near_pairs_are_the_same_with_the_index(thumbnails_with_copies, monkeypatch):
    """Real Fashion-MNIST thumbnails with re-saved, shifted and mirrored copies: the whole
    near-duplicate detector finds the same pairs when every pass uses the index, and with the
    wide descriptors computed on demand."""
    digests, vectors, thumbnails, hashes = thumbnails_with_copies
    exact = duplicates.near_pairs(digests, vectors, thumbnails, hashes)
    monkeypatch.setattr(pairs, "EXACT_COMPARISONS", -1)
    monkeypatch.setattr(lazy_rows, "WHOLE_DESCRIBED", 0)
    hashed = duplicates.near_pairs(digests, vectors, thumbnails, hashes)
    assert len(exact) >= 3 and hashed == exact


@pytest.fixture(scope="module")
def thumbnails_with_copies(fashion_mnist_dir):
    """(digests, vectors, thumbnails, hashes) of real Fashion-MNIST images plus three copies of
    three of them (the same pixels, shifted by a pixel, mirrored); the 'vectors' are the images'
    16x16 pixels plus their mirror image, which a copy keeps closely enough."""
    from PIL import Image

    from retrainer.data.signatures import DECODE_SIZE, signature_of_pixels

    pictures = [np.asarray(Image.open(path).convert("RGB")) for path in
                sorted(fashion_mnist_dir.glob("*/*"))]
    pictures += [pictures[0], np.roll(pictures[1], 1, axis=1), pictures[2][:, ::-1]]
    signatures = [signature_of_pixels(np.asarray(Image.fromarray(picture).resize(
        DECODE_SIZE, Image.Resampling.BILINEAR))) for picture in pictures]
    thumbnails = np.stack([thumbnail for thumbnail, _ in signatures])
    hashes = np.array([value for _, value in signatures], np.uint64)
    small = [np.asarray(Image.fromarray(picture).convert("L").resize((16, 16)), np.float32)
             for picture in pictures]
    vectors = np.stack([(grey + grey[:, ::-1]).ravel() + 1.0 for grey in small])
    digests = [f"{index:064x}" for index in range(len(pictures))]
    return digests, vectors, thumbnails, hashes


@SETTINGS
@given(row_sets(max_rows=30), st.integers(0, 2**16))
def test_conditions_find_every_pair_equal_in_all_parts_of_one(rows, seed):
    """Two conditions (A and B, or A and C): a pair whose rows are equal in A and in B, or in A
    and in C, shares every bucket of that condition's tables, so it is always a candidate;
    block scoring and pair-by-pair scoring give the same candidates."""
    rng = np.random.default_rng(seed)
    second = rng.integers(0, 2, (len(rows), 3)).astype(np.float32)
    third = rng.integers(0, 2, (len(rows), 2)).astype(np.float32)
    conditions = [[lsh.Part(rows, None, 0.05), lsh.Part(second, None, 0.05)],
                  [lsh.Part(rows, None, 0.05), lsh.Part(third, None, 0.05)]]
    found = candidates(conditions)
    assert len(found) == len(set(found))
    expected = {(i, j) for i in range(len(rows)) for j in range(i + 1, len(rows))
                if np.array_equal(rows[i], rows[j])
                and (np.array_equal(second[i], second[j]) or np.array_equal(third[i], third[j]))}
    assert expected <= set(found)
    saved = lsh.BLOCK_PAIRS
    try:
        lsh.BLOCK_PAIRS = 1  # every bucket as a matrix product
        assert sorted(candidates(conditions)) == sorted(found)
    finally:
        lsh.BLOCK_PAIRS = saved


@SETTINGS
@given(st.integers(2, 400), st.sampled_from([0.9, 0.97, 0.997]), st.booleans(),
       st.integers(0, 2**16))
def test_wide_rows_pairs_are_the_same_when_far_sketches_are_not_scored(count, gate, cross, seed):
    """Rows wider than the sketches (copies planted within the reach; gates up to the mirror
    pass's): the index that leaves unscored the candidates whose sketch prefixes lie beyond the
    gate's reach returns exactly the pairs of the index that scores every candidate, with and
    without `other` rows (a pair scored both ways round)."""
    rng = np.random.default_rng(seed)
    width = pairs.SKETCH_DIMENSIONS + 32
    unit = unit_rows(rng.standard_normal((count, width)).astype(np.float32))
    reach = np.sqrt(2 - 2 * gate)
    originals = np.arange(0, count, 3)
    nudge = unit_rows(rng.standard_normal((len(originals), width)).astype(np.float32))
    rows = np.concatenate([unit, unit_rows(unit[originals] + 0.25 * reach * nudge)])
    other = unit_rows(rows[:, ::-1] + 0.01) if cross else None
    filtered = pair_set(pairs.similar_pairs(rows, gate, other=other, method="index"))
    everything = pairs._within
    try:
        pairs._within = lambda sketches, firsts, seconds, reach: np.ones(len(firsts), bool)
        scored = pair_set(pairs.similar_pairs(rows, gate, other=other, method="index"))
    finally:
        pairs._within = everything
    assert filtered == scored
    assert cross or len(scored) >= len(originals)  # the copies were looked at


class _Untakeable:
    """Rows that fail when taken: a part the tables do not hash must not be read."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.shape = shape

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: object) -> np.ndarray:
        raise AssertionError("rows of an unhashed part taken")


@SETTINGS
@given(row_sets(max_rows=30), st.integers(1, 8), st.integers(0, 2**16))
def test_a_part_with_no_projections_is_not_read_and_changes_no_code(rows, projections, seed):
    """A plan may give a part no projections (its condition hashed on the other part alone):
    that part's rows (which may be computed when taken) are then not taken for the codes, and
    the candidates are those of the same plan on its real rows."""
    assume(len(rows) >= 2)
    second = np.random.default_rng(seed).standard_normal((len(rows), 3)).astype(np.float32)
    shape = lsh.Plan(4, (projections, 0), (1.0, 1.0), 0.0, 0.0, 0.0)

    def found(other: object) -> list[tuple[int, int]]:
        conditions = [[lsh.Part(rows, None, 0.1), lsh.Part(other, None, 0.1)]]  # type: ignore[arg-type]
        return [pair for first, second_, _ in lsh.close_pairs(
                    conditions, lambda r, c: np.ones((len(r), len(c)), np.float32),
                    lambda r, c: np.ones(len(r), np.float32), 0.5, seed, [shape])
                for pair in zip(first.tolist(), second_.tolist())]

    assert found(_Untakeable(second.shape)) == found(second)


@settings(max_examples=15, deadline=None)
@given(st.integers(600, 2500), st.integers(65, 160), st.integers(0, 2**16), st.booleans())
def test_vectors_reduced_when_taken_are_the_whole_reductions(count, width, seed, subset):
    """Above WHOLE_DESCRIBED images the passes' 64-wide reduction of the vectors is computed
    when rows are taken (`lazy_rows.Reduced`): with every row kept, slices from a multiple of
    BLOCK_ROWS (the index's blocks) give `unit_components`' floats exactly; any rows of any
    kept subset the same values to float32 rounding."""
    from retrainer.audit.neighbours import BLOCK_ROWS, unit_components

    rng = np.random.default_rng(seed)
    vectors = (rng.standard_normal((count, width)) + rng.standard_normal(width)).astype(np.float32)
    keep = (np.sort(rng.choice(count, count * 3 // 4, replace=False)) if subset
            else np.arange(count))
    whole = unit_components(vectors, 64, center=False, normalize=True)[keep]
    assert isinstance(lazy_rows.reduced_vectors(vectors, keep, 64), np.ndarray)
    saved = lazy_rows.WHOLE_DESCRIBED
    try:
        lazy_rows.WHOLE_DESCRIBED = 0
        reduced = lazy_rows.reduced_vectors(vectors, keep, 64)
    finally:
        lazy_rows.WHOLE_DESCRIBED = saved
    assert isinstance(reduced, lazy_rows.Reduced) and reduced.shape == whole.shape
    for start in range(0, len(keep), 2 * BLOCK_ROWS):  # other blocks when a subset is kept
        taken, expected = reduced[start:start + 2 * BLOCK_ROWS], whole[start:start + 2 * BLOCK_ROWS]
        assert np.array_equal(taken, expected) or subset
        np.testing.assert_allclose(taken, expected, atol=1e-6)
    positions = rng.integers(0, len(keep), 300)
    np.testing.assert_allclose(reduced[positions], whole[positions], atol=1e-6)
    np.testing.assert_allclose(reduced[::7], whole[::7], atol=1e-6)
