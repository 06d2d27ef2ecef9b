"""Audit detectors: exact duplicates (same SHA-256) and near-duplicates (same picture, re-made).

Near-duplicates are searched among distinct files in three blocked passes (see `signatures`): one
gated by the Fourier magnitude, which ignores shifts (re-encoded, resized, brightened, shifted
copies), one gated by each 8x8 thumbnail against the other's centre enlarged and checked against
the vectors (cropped copies, whose spectrum a zoom changes), one gated by each thumbnail against
the other's mirror image (flipped copies); each keeps an image's NEIGHBOUR_LIMIT best partners
only. A candidate is kept when the pixels agree (thumbnail and perceptual hash, or the thumbnails
once shifted, zoomed or mirrored into line) AND the bottleneck vectors
agree: on Fashion-MNIST the vectors alone rank merely similar garments above a copy, and pixels
alone match different photos of look-alike products, but the two together rarely do. Thresholds
and their measurements: docs/audit.md. The descriptors' rows, whole or made when taken (a million
images): `lazy_rows`.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Callable, Optional, Sequence

import numpy as np

from retrainer.audit._threads import in_order
from retrainer.audit.lazy_rows import Thumbnails, described, kept, per_chunk, reduced_vectors
from retrainer.audit.neighbours import (
    Rows,
    pair_cosines,
    row_norms,
    take_rows,
    unit_components,
    unit_rows,
)
from retrainer.audit.pairs import similar_pairs, unique_pairs
from retrainer.audit.signatures import (
    fourier_descriptor,
    hamming,
    integer_alignment,
    pooled,
    shifted_by_whole_pixels,
    thumbnail_descriptor,
    warped_correlation,
    zoomed_in,
)

# Measured with benchmarks/bench_audit.py (docs/audit.md): see there before changing any of them.
# The passes (gate and pre-tests) use each descriptor's top principal axes (the crop pass: the
# 64-d 8x8 thumbnails), cheap on the millions of gated pairs; on the benchmark's images such a
# projected cosine never fell below the full one, so they use the match thresholds themselves;
# candidates are then scored exactly.
SEARCH_DIMENSIONS = {"spectrum": 32, "picture": 64, "vector": 64}
_CHUNK = 20_000  # candidate pairs scored at a time
NEIGHBOUR_LIMIT = 16  # partners per image kept by each pass (a k-nearest-neighbour graph)
# A re-encoded, resized or brightened copy: the same thumbnail, hash and roughly the same vector.
THUMBNAIL_MATCH = 0.997
HASH_MATCH = 16  # bits of 64
THUMBNAIL_VECTOR_MATCH = 0.70
# A shifted copy: the same spectrum, a close vector, and a thumbnail that matches once shifted
# (sub-pixel: a pixel of a 28-pixel image is 1.14 of the thumbnail's): first the best whole-pixel
# shift (cheap; must reach SHIFT_COARSE_MATCH), then FINE_SHIFTS around it; and shifting must
# help by SHIFT_GAIN (look-alike garments, already aligned, match best as they are).
FOURIER_MATCH = 0.983
SHIFT_VECTOR_MATCH = 0.85
SHIFT_MARGIN = 2
SHIFT_COARSE_MATCH = 0.985
FINE_SHIFTS = (-0.5, -0.25, 0.0, 0.25, 0.5)
SHIFTED_MATCH = 0.9945
SHIFT_GAIN = 0.02
# A lightly cropped copy (a zoom by about 1.08): a close vector, one 8x8 thumbnail matching the
# other's centre enlarged CROP_ZOOM times, and a thumbnail that matches the other zoomed by one
# of CROP_SCALES and shifted (inner 24x24 compared), clearly better than it does unzoomed
# (look-alike garments match best as they are).
CROP_VECTOR_MATCH = 0.83
CROP_ZOOM = 1.08
CROP_GATE = 0.995
CROP_SCALES = (1.04, 1.08)
CROP_SHIFTS = (-0.5, 0.0, 0.5)
CROP_MARGIN = 4
CROPPED_MATCH = 0.995
ZOOM_GAIN = 0.01
# A mirrored copy: its thumbnail matches the other's mirror image as a re-encoded copy's does
# (THUMBNAIL_MATCH; no hash test: the hash is of the unmirrored picture) and the vectors, which
# barely change under a mirror, agree closely (flipped copies >= 0.97 on both datasets).
MIRROR_VECTOR_MATCH = 0.90
_MAX_CORRELATION = 1.0 + 1e-4  # of two float32 unit vectors, with rounding to spare


@dataclasses.dataclass(frozen=True)
class NearPair:
    """Two near-duplicate images (positions into the audited list) and how alike they are."""

    first: int
    second: int
    similarity: float  # the pixel descriptor's cosine that matched, in [0, 1]


def exact_groups(digests: Sequence[str]) -> list[list[int]]:
    """Positions of byte-identical files, groups of two or more, in position order."""
    by_digest: dict[str, list[int]] = defaultdict(list)
    for position, digest in enumerate(digests):
        by_digest[digest].append(position)
    return sorted(group for group in by_digest.values() if len(group) > 1)


def near_pairs(
    digests: Sequence[str], vectors: np.ndarray, thumbnails: Thumbnails, hashes: np.ndarray
) -> list[NearPair]:
    """Pairs of distinct files showing the same picture (one pair per two files' digests).

    Args:
        digests: hex SHA-256 per image; images with the same digest are compared once.
        vectors: float32 [N, D] bottleneck vectors.
        thumbnails: uint8 [N, 32, 32] grey thumbnails (an array, or rows in a scratch file).
        hashes: uint64 [N] perceptual hashes.

    Returns:
        NearPair list between the first images of each digest, first < second.
    """
    first_of: dict[str, int] = {}
    for position, digest in enumerate(digests):
        first_of.setdefault(digest, position)
    keep = np.array(sorted(first_of.values()), np.int64)
    del first_of  # a million digests: ~100 MB
    if len(keep) < 2:
        return []
    thumbnails = take_rows(thumbnails, keep)
    descriptors: dict[str, Rows] = {
        "spectrum": described(fourier_descriptor, thumbnails),
        "picture": described(thumbnail_descriptor, thumbnails),
        "mirrored": described(mirrored_descriptor, thumbnails)}
    norms = row_norms(vectors)

    def exact_vector(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        return pair_cosines(vectors, norms, keep[rows], keep[columns])

    firsts, seconds = _candidates(vectors, keep, thumbnails, descriptors)
    kept_hashes = hashes[keep]
    matches = in_order(lambda start: _match(firsts[start:start + _CHUNK],
                                            seconds[start:start + _CHUNK], descriptors,
                                            exact_vector, thumbnails, kept_hashes),
                       range(0, len(firsts), _CHUNK))
    pairs = [(int(keep[first]), int(keep[second]), float(min(score, 1.0)))
             for chunk in matches for first, second, score in zip(*chunk)]
    return [NearPair(*pair) for pair in pairs]


def _cosines(unit: Rows, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """float32 [P]: the cosines of unit rows `rows[p]` and `columns[p]`."""
    return np.einsum("ij,ij->i", unit[rows], unit[columns])


def _candidates(vectors: np.ndarray, keep: np.ndarray, thumbnails: Thumbnails,
                descriptors: dict[str, Rows]) -> tuple[np.ndarray, np.ndarray]:
    """The three passes' candidate pairs (firsts < seconds, each once). Each pass's reduced
    descriptors are made just before it and dropped after it (at a million images each is
    128-256 MB): the same arrays, so the same pairs. Adds the crop pass's "small" and
    "enlarged" to `descriptors` (`lazy_rows.kept`)."""
    # The vectors are used in place (a copy is 256 MB at 50k): reduced, then subset; exact
    # cosines are gathered pair by pair through `keep` by the caller.
    vector = reduced_vectors(vectors, keep, SEARCH_DIMENSIONS["vector"])

    def vector_at_least(threshold: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        return lambda rows, columns: _cosines(vector, rows, columns) >= threshold

    found = [_shift_pass(descriptors, vector)]
    small, enlarged = (per_chunk(small_descriptor, thumbnails),
                       per_chunk(enlarged_descriptor, thumbnails))
    found.append(similar_pairs(small, CROP_GATE, vector_at_least(CROP_VECTOR_MATCH),
                               NEIGHBOUR_LIMIT, enlarged,
                               alternatives=[(vector, CROP_VECTOR_MATCH)]))
    descriptors["small"], descriptors["enlarged"] = (
        kept(small, small_descriptor, thumbnails), kept(enlarged, enlarged_descriptor, thumbnails))
    del small, enlarged
    found.append(similar_pairs(descriptors["picture"], THUMBNAIL_MATCH,
                               vector_at_least(MIRROR_VECTOR_MATCH), NEIGHBOUR_LIMIT,
                               descriptors["mirrored"],
                               alternatives=[(vector, MIRROR_VECTOR_MATCH)]))
    return unique_pairs(*(np.concatenate(side) for side in zip(*found)))


def _shift_pass(descriptors: dict[str, Rows], vector: Rows) -> tuple[np.ndarray, ...]:
    """The pass gated by the Fourier magnitude (re-encoded, resized, brightened and shifted
    copies): its pairs (firsts, seconds), its reduced descriptors freed on return."""
    spectrum, picture = (unit_components(descriptors[name], SEARCH_DIMENSIONS[name],
                                         center=False) for name in ("spectrum", "picture"))

    def same_or_shifted(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        passed = _cosines(vector, rows, columns) >= SHIFT_VECTOR_MATCH
        rest = np.flatnonzero(~passed)  # the picture test only where it can still decide
        passed[rest] = _cosines(picture, rows[rest], columns[rest]) >= THUMBNAIL_MATCH
        return passed

    return similar_pairs(spectrum, FOURIER_MATCH, same_or_shifted, NEIGHBOUR_LIMIT,
                         alternatives=[(vector, SHIFT_VECTOR_MATCH),
                                       (picture, THUMBNAIL_MATCH)])


def mirrored_descriptor(thumbnails: np.ndarray) -> np.ndarray:
    """float32 [N, 256]: `thumbnail_descriptor` of the thumbnails mirrored left to right."""
    return thumbnail_descriptor(thumbnails[:, :, ::-1])


def small_descriptor(thumbnails: np.ndarray) -> np.ndarray:
    """float32 [N, 64]: 8x8 mean-pooled thumbnails, mean-centred, length 1 (blind to detail, so
    a slightly misaligned copy still matches)."""
    return unit_rows(pooled(thumbnails, 4), center=True)


def enlarged_descriptor(thumbnails: np.ndarray) -> np.ndarray:
    """float32 [N, 64]: `small_descriptor` of the thumbnails' centres enlarged CROP_ZOOM times."""
    return small_descriptor(zoomed_in(thumbnails, CROP_ZOOM))


def crop_gate(descriptors: dict[str, Rows], rows: np.ndarray,
              columns: np.ndarray) -> np.ndarray:
    """float32 [P]: how well either image's 8x8 thumbnail matches the other's enlarged centre."""
    small, enlarged = descriptors["small"], descriptors["enlarged"]
    return np.maximum(np.einsum("ij,ij->i", small[rows], enlarged[columns]),
                      np.einsum("ij,ij->i", enlarged[rows], small[columns]))


def zoom_scores(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(zoomed, unzoomed) float32 [P]: the crop test's best correlation with either thumbnail
    enlarged by CROP_SCALES (a crop enlarges one of the two), and the same without zoom."""
    def best(scales: Sequence[float], a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return warped_correlation(a, b, CROP_SHIFTS, scales, CROP_MARGIN)

    zoomed = np.maximum(best(CROP_SCALES, first, second), best(CROP_SCALES, second, first))
    return zoomed, best((1.0,), first, second)


def shift_scores(first: np.ndarray, second: np.ndarray,
                 gain: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
    """(shifted, unshifted) float32 [P]: the shift test's best correlation, sub-pixel around the
    best whole-pixel shift (pairs whose whole-pixel best is below SHIFT_COARSE_MATCH keep that),
    and the correlation as they are.

    With `gain`, pairs that correlate too well unshifted for shifting to add `gain` (a
    correlation is at most 1) keep their whole-pixel best too: on 70,000 Fashion-MNIST images
    that skips the sub-pixel search for five in six of the pairs that reach it."""
    scores, rows, columns, unshifted = integer_alignment(first, second, SHIFT_MARGIN)
    wanted = scores >= SHIFT_COARSE_MATCH
    if gain is not None:
        wanted &= unshifted <= _MAX_CORRELATION - gain
    chosen = np.flatnonzero(wanted)
    if len(chosen):  # one pass for all: each `second` moved by its whole-pixel best first
        aligned = shifted_by_whole_pixels(second[chosen], rows[chosen], columns[chosen])
        scores[chosen] = warped_correlation(first[chosen], aligned, FINE_SHIFTS,
                                            margin=SHIFT_MARGIN)
    return scores, unshifted


def _match(firsts: np.ndarray, seconds: np.ndarray, descriptors: dict[str, Rows],
           exact_vector: Callable[[np.ndarray, np.ndarray], np.ndarray],
           thumbnails: Thumbnails, hashes: np.ndarray) -> tuple[np.ndarray, ...]:
    """The candidate pairs that are near-duplicates: (firsts, seconds, similarity).

    `exact_vector(firsts, seconds)` gives the bottleneck vectors' exact cosines."""
    def score(name: str, rows: np.ndarray) -> np.ndarray:
        if name == "vector":
            return exact_vector(firsts[rows], seconds[rows])
        unit = descriptors[name]
        return np.einsum("ij,ij->i", unit[firsts[rows]], unit[seconds[rows]])

    # Cheapest tests first: the exact 1280-d vector cosine before the shift and zoom tests
    # (dozens of warped thumbnails per pair).
    similarity = np.zeros(len(firsts), np.float32)
    picture = score("picture", np.arange(len(firsts)))
    by_picture = np.flatnonzero((picture >= THUMBNAIL_MATCH)
                                & (hamming(hashes[firsts], hashes[seconds]) <= HASH_MATCH))
    by_picture = by_picture[score("vector", by_picture) >= THUMBNAIL_VECTOR_MATCH]
    similarity[by_picture] = picture[by_picture]
    shifted = np.flatnonzero(similarity == 0)
    shifted = shifted[score("spectrum", shifted) >= FOURIER_MATCH]
    shifted = shifted[score("vector", shifted) >= SHIFT_VECTOR_MATCH]
    shift_score, unshifted = shift_scores(thumbnails[firsts[shifted]],
                                          thumbnails[seconds[shifted]], SHIFT_GAIN)
    passed = (shift_score >= SHIFTED_MATCH) & (shift_score - unshifted >= SHIFT_GAIN)
    similarity[shifted[passed]] = shift_score[passed]
    cropped = np.flatnonzero(similarity == 0)
    cropped = cropped[crop_gate(descriptors, firsts[cropped], seconds[cropped]) >= CROP_GATE]
    cropped = cropped[score("vector", cropped) >= CROP_VECTOR_MATCH]
    zoomed, unzoomed = zoom_scores(thumbnails[firsts[cropped]], thumbnails[seconds[cropped]])
    similarity[cropped] = np.where((zoomed >= CROPPED_MATCH) & (zoomed - unzoomed >= ZOOM_GAIN),
                                   zoomed, 0.0)
    mirrored = np.flatnonzero(similarity == 0)
    mirror = np.einsum("ij,ij->i", descriptors["picture"][firsts[mirrored]],
                       descriptors["mirrored"][seconds[mirrored]])
    chosen = mirror >= THUMBNAIL_MATCH
    mirrored, mirror = mirrored[chosen], mirror[chosen]
    chosen = score("vector", mirrored) >= MIRROR_VECTOR_MATCH
    similarity[mirrored[chosen]] = mirror[chosen]
    matched = similarity > 0
    return firsts[matched], seconds[matched], similarity[matched]


def connected_groups(count: int, edges: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Groups of two or more positions linked by `edges` (union-find), each sorted, sorted."""
    parent = list(range(count))

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for first, second in edges:
        parent[root(first)] = root(second)
    members: dict[int, list[int]] = defaultdict(list)
    for node in range(count):
        members[root(node)].append(node)
    return sorted(group for group in members.values() if len(group) > 1)
