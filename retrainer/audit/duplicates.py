"""Audit detectors: exact duplicates (same SHA-256) and near-duplicates (same picture, re-made).

Near-duplicates are searched among distinct files, in one blocked pass over three descriptors
(see `signatures`): the 16x16 thumbnail, the Fourier magnitude (which ignores shifts) and the
vectors' top principal components. A candidate is kept when the pixels agree (thumbnail and perceptual hash, or the
thumbnails once aligned) AND the bottleneck vectors agree: on Fashion-MNIST the vectors alone
rank merely similar garments above a copy, and pixels alone match different photos of look-alike
products, but the two together rarely do. Thresholds and their measurements: docs/audit.md.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from retrainer.audit.neighbours import principal_components, similar_pairs, unit_rows
from retrainer.audit.signatures import (aligned_correlation, fourier_descriptor, hamming,
                                        thumbnail_descriptor)

# Measured with scripts/bench_audit.py (docs/audit.md): see there before changing any of them.
# The candidate search compares each descriptor on its top principal axes; on the benchmark's
# images such a projected cosine never fell below the full one, so the search uses the match
# thresholds themselves and the candidates are then scored on the full descriptors.
SEARCH_DIMENSIONS = {"spectrum": 32, "picture": 64, "vector": 64}
_CHUNK = 20_000  # candidate pairs scored at a time
# A re-encoded, resized or brightened copy: the same thumbnail, hash and roughly the same vector.
THUMBNAIL_MATCH = 0.997
HASH_MATCH = 16  # bits of 64
THUMBNAIL_VECTOR_MATCH = 0.70
# A shifted copy: the same spectrum, a close vector, and a 32x32 thumbnail that matches once
# aligned (best of the shifts by up to ALIGN_REACH pixels).
FOURIER_MATCH = 0.983
SHIFT_VECTOR_MATCH = 0.88
SHIFT_THUMBNAIL_MATCH = 0.70
ALIGNED_MATCH = 0.993
ALIGN_REACH = 1
# A lightly cropped copy (a zoom): the same spectrum, a close thumbnail and vector, and a
# thumbnail that matches once zoomed by one of CROP_SCALES and shifted (inner 24x24 compared),
# better than it does unzoomed (look-alike garments match best as they are).
CROP_SCALES = (1 / 1.08, 1 / 1.04, 1.04, 1.08)
CROP_MARGIN = 4
CROP_THUMBNAIL_MATCH = 0.95
CROP_VECTOR_MATCH = 0.83
CROP_ALIGNED_MATCH = 0.9945


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
    digests: Sequence[str], vectors: np.ndarray, thumbnails: np.ndarray, hashes: np.ndarray
) -> list[NearPair]:
    """Pairs of distinct files showing the same picture (one pair per two files' digests).

    Args:
        digests: hex SHA-256 per image; images with the same digest are compared once.
        vectors: float32 [N, D] bottleneck vectors.
        thumbnails: uint8 [N, 32, 32] grey thumbnails.
        hashes: uint64 [N] perceptual hashes.

    Returns:
        NearPair list between the first images of each digest, first < second.
    """
    first_of = {}
    for position, digest in enumerate(digests):
        first_of.setdefault(digest, position)
    keep = np.array(sorted(first_of.values()), np.int64)
    if len(keep) < 2:
        return []
    descriptors = {"spectrum": fourier_descriptor(thumbnails[keep]),
                   "picture": thumbnail_descriptor(thumbnails[keep]),
                   "vector": unit_rows(vectors[keep])}
    reduced = [unit_rows(principal_components(descriptors[name], dims, center=False))
               for name, dims in SEARCH_DIMENSIONS.items()]

    def candidates(cosines: list[np.ndarray]) -> np.ndarray:
        picture, vector = cosines
        return ((picture >= THUMBNAIL_MATCH)
                | (vector >= SHIFT_VECTOR_MATCH) & (picture >= SHIFT_THUMBNAIL_MATCH)
                | (vector >= CROP_VECTOR_MATCH) & (picture >= CROP_THUMBNAIL_MATCH))

    # Every kind of copy keeps the spectrum (a picture that matches keeps it too): it gates.
    firsts, seconds = similar_pairs(reduced, FOURIER_MATCH, candidates)
    matches = [_match(firsts[start:start + _CHUNK], seconds[start:start + _CHUNK], descriptors,
                      thumbnails[keep], hashes[keep])
               for start in range(0, len(firsts), _CHUNK)]
    pairs = [(int(keep[first]), int(keep[second]), float(min(score, 1.0)))
             for chunk in matches for first, second, score in zip(*chunk)]
    return [NearPair(*pair) for pair in pairs]


def _match(firsts: np.ndarray, seconds: np.ndarray, descriptors: dict[str, np.ndarray],
           thumbnails: np.ndarray, hashes: np.ndarray) -> tuple[np.ndarray, ...]:
    """The candidate pairs that are near-duplicates: (firsts, seconds, similarity)."""
    def score(name: str, rows: np.ndarray) -> np.ndarray:
        unit = descriptors[name]
        return np.einsum("ij,ij->i", unit[firsts[rows]], unit[seconds[rows]])

    def aligned(rows: np.ndarray, **alignment: Any) -> np.ndarray:
        return aligned_correlation(thumbnails[firsts[rows]], thumbnails[seconds[rows]],
                                   ALIGN_REACH, **alignment)

    similarity = np.zeros(len(firsts), np.float32)
    everything = np.arange(len(firsts))
    picture = score("picture", everything)
    by_picture = np.flatnonzero((picture >= THUMBNAIL_MATCH)
                                & (hamming(hashes[firsts], hashes[seconds]) <= HASH_MATCH))
    by_picture = by_picture[score("vector", by_picture) >= THUMBNAIL_VECTOR_MATCH]
    similarity[by_picture] = picture[by_picture]
    rest = np.flatnonzero((similarity == 0) & (picture >= SHIFT_THUMBNAIL_MATCH))
    rest = rest[score("spectrum", rest) >= FOURIER_MATCH]
    vector = score("vector", rest)
    shifted = rest[vector >= SHIFT_VECTOR_MATCH]
    shift_score = aligned(shifted)
    similarity[shifted] = np.where(shift_score >= ALIGNED_MATCH, shift_score, 0.0)
    cropped = rest[(vector >= CROP_VECTOR_MATCH) & (picture[rest] >= CROP_THUMBNAIL_MATCH)]
    cropped = cropped[similarity[cropped] == 0]
    crop_score = aligned(cropped, scales=CROP_SCALES, margin=CROP_MARGIN)
    zoom_helps = crop_score > aligned(cropped, margin=CROP_MARGIN)
    similarity[cropped] = np.where((crop_score >= CROP_ALIGNED_MATCH) & zoom_helps, crop_score, 0.0)
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
