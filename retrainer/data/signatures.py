"""Perceptual signatures of decoded images, for the audit's near-duplicate search.

A signature is a 32x32 grey thumbnail and its perceptual hash (`imagehash.phash`, 64 bits). The
decoder makes the 64x64 RGB copy they come from in the same pass as the extractor's pixels
(`decode_image(..., thumbnail=...)`), so the bottleneck stage produces signatures for the price of
one small resize and the audit never decodes a file again.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Union

import imagehash
import numpy as np
from PIL import Image

from retrainer.io.scratch import ScratchRows, scratch_or_memory

THUMBNAIL = 32
DECODE_SIZE = (64, 64)  # decoded larger than the thumbnail so downscaling averages pixels
# From this many images the thumbnails (1 KB each) are kept in a scratch file on disk
# (`io.scratch`), not in memory: 256 MB and more.
SCRATCH_ROWS = 1 << 18


@dataclasses.dataclass(frozen=True)
class Signatures:
    """Signatures of N images; black thumbnails and hash 0 where an image has none.

    Attributes:
        thumbnails: uint8 [N, 32, 32] grey: an array, or from SCRATCH_ROWS images rows in a
            scratch file (`ScratchRows`: indexing gives arrays).
        hashes: uint64 [N] perceptual hashes.
    """

    thumbnails: Union[np.ndarray, ScratchRows]
    hashes: np.ndarray

    @classmethod
    def empty(cls, count: int, scratch: Optional[Union[str, os.PathLike[str]]] = None
              ) -> Signatures:
        """Black thumbnails and zero hashes for `count` images; from SCRATCH_ROWS of them
        the thumbnails in a scratch file in the folder `scratch` (None: in memory)."""
        shape = (count, THUMBNAIL, THUMBNAIL)
        return cls(scratch_or_memory(shape, np.uint8, scratch if count >= SCRATCH_ROWS else None),
                   np.zeros(count, np.uint64))

    def take(self, positions: np.ndarray) -> Signatures:
        """The signatures at `positions` (int [M]), in that order: these very arrays when
        `positions` are all rows in order (at a million images a copy is 1 GB of thumbnails)."""
        positions = np.asarray(positions)
        if (len(positions) == len(self.hashes)
                and np.array_equal(positions, np.arange(len(self.hashes)))):
            return self
        thumbnails = self.thumbnails
        return Signatures(thumbnails.take(positions) if isinstance(thumbnails, ScratchRows)
                          else thumbnails[positions], self.hashes[positions])


def signature_of_pixels(pixels: np.ndarray) -> tuple[np.ndarray, np.uint64]:
    """(uint8 [32, 32] grey thumbnail, uint64 perceptual hash) of uint8 [H, W, 3] RGB pixels
    (the decoder's 64x64 copy)."""
    grey = Image.fromarray(pixels).convert("L").resize((THUMBNAIL, THUMBNAIL),
                                                       Image.Resampling.BILINEAR)
    return np.asarray(grey, np.uint8), np.uint64(int(str(imagehash.phash(grey)), 16))
