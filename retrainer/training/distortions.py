"""retrain.py's image distortions: the settings and the per-image seeds (the TensorFlow ops that
apply them, on decoded [0, 1] images, are training/distortion_ops.py).

Same math as retrain.py's `add_input_distortions`, applied per image: the image is resized
(bilinear, retrain.py's legacy `resize_bilinear`) to `margin * scale` times the input size, where
margin = 1 + random_crop/100 and scale is drawn from [1, 1 + random_scale/100); a window of the
input size is cropped at a random place; it is mirrored left-right with probability 0.5 when
flip_left_right is set; and it is multiplied by a brightness factor drawn from
[1 - random_brightness/100, 1 + random_brightness/100), without clipping. One difference: retrain.py
resized the original JPEG, here the image already decoded at the input size is resized (the shared
decode stage), so crops do not gain detail the input size cannot hold.

Every draw comes from a per-image stateless seed, so the same seed gives the same variants, in any
batch order, on any run.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

import numpy as np

# Bump when the distortion math changes: it is part of every distorted cache key.
DISTORTION_FORMAT = "d1"


@dataclasses.dataclass(frozen=True)
class Distortions:
    """retrain.py's four distortion flags (percentages; 0 / False = off).

    Attributes:
        flip_left_right: mirror half of the images horizontally.
        random_crop: margin, in percent of the input size, around the crop window.
        random_scale: the image is enlarged by a random 0..random_scale percent before cropping.
        random_brightness: pixels are multiplied by a random factor within +-random_brightness %.
    """

    flip_left_right: bool = False
    random_crop: int = 0
    random_scale: int = 0
    random_brightness: int = 0

    @property
    def enabled(self) -> bool:
        """True when any distortion is on (retrain.py's `should_distort_images`)."""
        return (self.flip_left_right or self.random_crop != 0 or self.random_scale != 0
                or self.random_brightness != 0)

    @property
    def key(self) -> str:
        """Filesystem-safe name of these settings (part of the distorted-vector cache key)."""
        return (f"{DISTORTION_FORMAT}-flip{int(self.flip_left_right)}-crop{self.random_crop}"
                f"-scale{self.random_scale}-brightness{self.random_brightness}")


def image_seeds(digests: Sequence[str], seed: int, draw: str) -> np.ndarray:
    """Stateless seeds, one per image, from the image content, the run's seed and a draw name.

    Args:
        digests: hex SHA-256 of each image file.
        seed: the run's --seed.
        draw: names the draw, e.g. "variant3" or "epoch2", so each gets its own randomness.

    Returns:
        int64 [N, 2] seeds for `distortion_ops.distort_images`.
    """
    rows = []
    for digest in digests:
        value = hashlib.sha256(f"{digest}:{seed}:{draw}".encode()).digest()
        rows.append(np.frombuffer(value[:16], np.int64))
    return np.array(rows, np.int64).reshape(len(rows), 2)
