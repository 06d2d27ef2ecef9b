"""Multi-label targets: the 0/1 matrix a sigmoid head trains on and is measured against."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def targets_of(images: Sequence[Any], num_classes: int) -> np.ndarray:
    """float32 [N, C]: 1 where image n has label c (from each ImageFile's `label_indices`)."""
    targets = np.zeros((len(images), num_classes), np.float32)
    for row, image in enumerate(images):
        targets[row, list(image.label_indices)] = 1.0
    return targets
