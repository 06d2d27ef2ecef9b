"""Audit detector: outliers, images far from everything else in their class.

Score: mean cosine distance of an image's bottleneck vector to its K nearest neighbours in the
same class. Within each class an image is flagged when its score exceeds Q3 + FENCE x IQR of the
class's scores (Tukey's "far out" fence); the reported score is how many IQRs it lies above the
class median. Cut-off measured with benchmarks/bench_audit.py (docs/audit.md).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from retrainer.audit._threads import PARALLEL_ROWS, in_order
from retrainer.audit.neighbours import mean_neighbour_distance, unit_components

NEIGHBOURS = 5
FENCE = 3.0
MIN_CLASS_SIZE = 10  # fewer images give no meaningful spread
DIMENSIONS = 64


@dataclasses.dataclass(frozen=True)
class Outlier:
    position: int
    score: float  # IQRs above the class median of the neighbour distance


def find_outliers(vectors: np.ndarray, labels: np.ndarray) -> list[Outlier]:
    """Images far from their class (see the module docstring), most isolated first.

    Args:
        vectors: float32 [N, D] bottleneck vectors.
        labels: int64 [N] class indices.

    Returns:
        Outlier list sorted by score, descending.
    """
    reduced = unit_components(vectors, DIMENSIONS, normalize=True)

    def class_outliers(label: int) -> list[Outlier]:
        members = np.flatnonzero(labels == label)
        if len(members) < MIN_CLASS_SIZE:
            return []
        distance = mean_neighbour_distance(reduced[members], min(NEIGHBOURS, len(members) - 1))
        first, median, third = np.percentile(distance, [25, 50, 75])
        spread = max(third - first, 1e-6)
        return [Outlier(int(members[index]), float((distance[index] - median) / spread))
                for index in np.flatnonzero(distance > third + FENCE * spread)]

    classes = np.unique(labels).tolist()
    per_class = in_order(class_outliers, classes, threads=len(labels) >= PARALLEL_ROWS)
    found = [outlier for outliers in per_class for outlier in outliers]
    return sorted(found, key=lambda outlier: (-outlier.score, outlier.position))
