"""The audit's search helpers against direct (unblocked, unpruned) formulations, on real images.

The 50k audit computes projections block by block, vector cosines pair by pair, and the shift
test's sub-pixel search in one pass; each must give what the plain computation gives.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import shift as shift_image

from retrainer.audit import duplicates, neighbours, pairs
from retrainer.audit.signatures import (
    integer_alignment,
    pooled,
    thumbnail_descriptor,
    warped_correlation,
)
from retrainer.data.signatures import DECODE_SIZE, signature_of_pixels


@pytest.fixture(scope="module")
def thumbnails(fashion_mnist_dir) -> np.ndarray:
    """uint8 [250, 32, 32]: the audit's thumbnails of 250 real Fashion-MNIST images."""
    def thumbnail(path):
        rgb = Image.open(path).convert("RGB").resize(DECODE_SIZE, Image.Resampling.BILINEAR)
        return signature_of_pixels(np.asarray(rgb))[0]

    return np.stack([thumbnail(path) for path in sorted(fashion_mnist_dir.glob("*/*"))])


@pytest.mark.parametrize("center, normalize", [(True, False), (False, False), (False, True)])
def test_blocked_projection_equals_the_direct_one(thumbnails, monkeypatch, center, normalize):
    matrix = thumbnail_descriptor(thumbnails) * np.linspace(0.5, 2.0, len(thumbnails))[:, None]
    monkeypatch.setattr(neighbours, "BLOCK_ROWS", 7)
    monkeypatch.setattr(neighbours, "PCA_SAMPLE", 60)
    projected = neighbours.principal_components(matrix, 16, center=center, normalize=normalize)

    rows = neighbours.unit_rows(matrix) if normalize else matrix
    rows = rows - rows.mean(axis=0) if center else rows
    _, _, axes = np.linalg.svd(rows[:: len(rows) // 60], full_matrices=False)
    direct = rows @ axes[:16].T
    assert projected.shape == direct.shape == (len(matrix), 16)
    # Axes' signs are arbitrary: compare what is used, the products between projected rows.
    np.testing.assert_allclose(projected @ projected.T, direct @ direct.T, atol=2e-4)


def test_pair_cosines_equal_those_of_unit_rows(thumbnails, monkeypatch):
    matrix = thumbnail_descriptor(thumbnails) * np.linspace(0.1, 3.0, len(thumbnails))[:, None]
    monkeypatch.setattr(neighbours, "BLOCK_ROWS", 9)
    rng = np.random.default_rng(0)
    firsts, seconds = rng.integers(0, len(matrix), (2, 500))
    unit = neighbours.unit_rows(matrix)
    cosines = neighbours.pair_cosines(matrix, neighbours.row_norms(matrix), firsts, seconds,
                                      chunk=64)
    np.testing.assert_allclose(cosines, np.einsum("ij,ij->i", unit[firsts], unit[seconds]),
                               atol=1e-6)


def test_unique_pairs_sorts_and_deduplicates():
    firsts, seconds = pairs.unique_pairs(np.array([3, 0, 3, 1, 0]), np.array([7, 9, 7, 2, 4]))
    assert list(zip(firsts.tolist(), seconds.tolist())) == [(0, 4), (0, 9), (1, 2), (3, 7)]
    assert [len(side) for side in pairs.unique_pairs(np.zeros(0), np.zeros(0))] == [0, 0]


def test_shift_scores_equal_the_exhaustive_sub_pixel_search(thumbnails):
    """Shifted copies (fractional shifts of real garments) and other pairs: the one-pass shift
    test gives, per pair, the best correlation over each whole-pixel shift, then over the fine
    shifts around the best one, computed here one shift at a time."""
    rng = np.random.default_rng(1)
    count = 120
    first = thumbnails[rng.integers(0, len(thumbnails), count)]
    second = thumbnails[rng.integers(0, len(thumbnails), count)].copy()
    for index in range(count // 2):  # half are real shifted copies
        offsets = rng.uniform(-1.3, 1.3, 2)
        second[index] = np.clip(shift_image(first[index].astype(float), offsets, order=1,
                                            mode="nearest"), 0, 255).astype(np.uint8)
    scores, unshifted = duplicates.shift_scores(first, second)

    margin = duplicates.SHIFT_MARGIN
    expected, expected_unshifted = np.empty(count), np.empty(count)
    for index in range(count):
        a, b = first[index:index + 1], second[index:index + 1]
        whole = {(dy, dx): warped_correlation(a, b, [dy], margin=margin, column_shifts=[dx])[0]
                 for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
        (dy, dx), best = max(whole.items(), key=lambda item: item[1])
        if best >= duplicates.SHIFT_COARSE_MATCH:
            best = warped_correlation(a, b, [dy + f for f in duplicates.FINE_SHIFTS], margin=margin,
                                      column_shifts=[dx + f for f in duplicates.FINE_SHIFTS])[0]
        expected[index], expected_unshifted[index] = best, whole[0, 0]
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    np.testing.assert_allclose(unshifted, expected_unshifted, atol=1e-5)
    assert np.median(scores[:count // 2]) > 0.99 > np.median(scores[count // 2:])  # copies align
    # Given the gain the test asks for, pairs that cannot gain it skip the sub-pixel search:
    # the test passes exactly the same pairs.
    gained, _ = duplicates.shift_scores(first, second, duplicates.SHIFT_GAIN)

    def passed(shifted: np.ndarray) -> np.ndarray:
        return ((shifted >= duplicates.SHIFTED_MATCH)
                & (shifted - unshifted >= duplicates.SHIFT_GAIN))

    assert passed(scores).any() and (passed(gained) == passed(scores)).all()


def test_integer_alignment_finds_a_whole_pixel_shift(thumbnails):
    second = np.roll(thumbnails[:40], (1, -1), axis=(1, 2))
    scores, rows, columns, unshifted = integer_alignment(thumbnails[:40], second)
    textured = thumbnails[:40].std(axis=(1, 2)) > 10
    assert (scores[textured] > 0.999).all() and (unshifted[textured] < scores[textured]).all()
    # The shift that moves `second` back onto `first`: up one row, right one column.
    assert (rows[textured] == -1).all() and (columns[textured] == 1).all()


def test_pooled_means_equal_numpys_block_means(thumbnails):
    for factor in (2, 4):
        side = 32 // factor
        expected = thumbnails.astype(np.float32).reshape(-1, side, factor, side, factor)
        assert (pooled(thumbnails, factor) == expected.mean(axis=(2, 4))).all()  # to the bit
        floats = thumbnails.astype(np.float32) * 1.37
        np.testing.assert_allclose(pooled(floats, factor),
                                   floats.reshape(-1, side, factor, side, factor).mean(axis=(2, 4)),
                                   rtol=1e-6)


def test_capped_similar_pairs_with_a_keep_test_are_each_images_nearest_kept(thumbnails,
                                                                           monkeypatch):
    """With `keep`, the cap picks each image's nearest among the pairs `keep` passes; pairs that
    cannot enter either image's best are dropped before `keep` sees them, and row blocks are
    searched on several threads: neither changes which pairs come out."""
    unit = neighbours.unit_rows(thumbnail_descriptor(thumbnails))
    monkeypatch.setattr(pairs, "TILE_ROWS", 5)
    monkeypatch.setattr(pairs, "TILE_COLUMNS", 13)
    gate, limit = 0.8, 2
    cosines = unit @ unit.T
    np.fill_diagonal(cosines, -np.inf)
    allowed = (np.add.outer(np.arange(len(unit)), np.arange(len(unit))) % 3) != 0
    seen = []

    def keep(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        seen.append(len(rows))
        return allowed[rows, columns]

    expected = set()
    for row, scores in enumerate(np.where(allowed, cosines, -np.inf)):
        for column in np.argsort(-scores)[:limit]:
            if scores[column] >= gate:
                expected.add((min(row, column), max(row, column)))
    first, second = pairs.similar_pairs(unit, gate, keep, limit)
    assert len(expected) > limit and set(zip(first.tolist(), second.tolist())) == expected
    gated = int(np.triu(cosines >= gate, 1).sum())
    assert sum(seen) < gated  # the cut-offs spared `keep` some of the gated pairs
