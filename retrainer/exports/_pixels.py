"""Decoded pixels for the exports' own uses (int8 calibration, the accuracy report).

Decoded by the same tf.data pipeline as the bottlenecks (`retrainer.cache.bottlenecks.decoded_images`),
so calibration and verification see exactly the pixels training saw.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

DECODE_BATCH = 32


def decode_files(
    paths: Sequence[os.PathLike[str] | str], input_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Decode `paths` at `input_size`, in order.

    Returns:
        (uint8 [N, H, W, 3] pixels, bool [N] decoded); rows of undecodable files are black.
    """
    from retrainer.cache.bottlenecks import decoded_images

    height, width = input_size
    pixels = np.zeros((len(paths), height, width, 3), np.uint8)
    ok = np.zeros(len(paths), bool)
    if not paths:
        return pixels, ok
    for positions, images, _, reasons in decoded_images(paths, input_size, DECODE_BATCH):
        rows = positions.numpy()
        pixels[rows] = images.numpy()
        ok[rows] = [not reason for reason in reasons.numpy()]
    return pixels, ok


def seeded_sample(count: int, available: int, seed: int) -> np.ndarray:
    """`min(count, available)` distinct sorted indices into `available` items, fixed by `seed`."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(available, size=min(count, available), replace=False))
