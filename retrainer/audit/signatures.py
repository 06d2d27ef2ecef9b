"""Audit helper: descriptors and alignment tests on the images' perceptual signatures.

Signatures (a 32x32 grey thumbnail and a perceptual hash per image, `retrainer.data.signatures`)
are made by the bottleneck stage from the decode that computes each vector and cached beside the
vectors (`retrainer.cache.signatures`). Near-duplicate search derives two descriptors from the
thumbnail: the 16x16 thumbnail itself (re-encoding, resizing, brightness) and the magnitude of its
2-D Fourier transform (unchanged by shifts), and aligns candidate pairs by sub-pixel shifts and
zooms.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy.fft import rfft2

from retrainer.audit.neighbours import unit_rows


def thumbnail_descriptor(thumbnails: np.ndarray) -> np.ndarray:
    """float32 [N, 256]: the 16x16 thumbnails, mean-centred, length 1."""
    return unit_rows(pooled(thumbnails, 2), center=True)


def pooled(pixels: np.ndarray, factor: int) -> np.ndarray:
    """float32 [N, H / factor, W / factor]: the means of `factor` x `factor` blocks of pixels
    [N, H, W], as sums of strided slices, one axis at a time (numpy's sum over a short middle
    axis runs one tiny loop per output value: 35x slower on 200 thumbnails, 3x on 10,000; for
    uint8 pixels the sums are exact, so the result is the same to the bit)."""
    values = np.asarray(pixels, np.float32)
    rows = values[:, 0::factor].copy()
    for offset in range(1, factor):
        rows += values[:, offset::factor]
    blocks = rows[:, :, 0::factor].copy()
    for offset in range(1, factor):
        blocks += rows[:, :, offset::factor]
    return blocks / np.float32(factor * factor)


def fourier_descriptor(thumbnails: np.ndarray) -> np.ndarray:
    """float32 [N, 128]: low-frequency magnitudes of the 2-D Fourier transform, length 1.

    The magnitude ignores where the picture sits in the frame, so a shifted copy keeps it.
    """
    grey = thumbnails.astype(np.float32)
    spectrum = np.abs(rfft2(grey - grey.mean(axis=(1, 2), keepdims=True)))
    low = np.concatenate([spectrum[:, :8, :8], spectrum[:, -8:, :8]], axis=1)
    return unit_rows(low)


def zoomed_in(thumbnails: np.ndarray, scale: float) -> np.ndarray:
    """float32 [N, 32, 32]: the thumbnails enlarged `scale` times about their centre (a crop)."""
    matrix = _resample_matrix(thumbnails.shape[-1], scale, 0.0)
    return np.einsum("ij,njk,lk->nil", matrix, thumbnails.astype(np.float32), matrix,
                     optimize=True)


def integer_alignment(first: np.ndarray, second: np.ndarray,
                      margin: int = 2) -> tuple[np.ndarray, ...]:
    """Best correlation of the inner windows over whole-pixel shifts of up to 1 (cheap slices).

    `first`'s window is centred and normalised once; for each shifted window of `second` the
    correlation is its dot product with that (centred, so `second`'s mean drops out) over the
    window's spread, from its sum and sum of squares (summed separably): no copies per shift.

    Returns:
        (best score float32 [P], its row shift int [P] and column shift int [P] of `second`,
        unshifted score float32 [P]).
    """
    size = first.shape[-1]
    side = size - 2 * margin
    target = _centred_units(first[:, margin:size - margin, margin:size - margin])
    target = target.reshape(len(first), side, side)
    # Centred on the whole thumbnail's mean, so float32 sums of squares do not cancel.
    second = np.asarray(second, np.float32)
    second = second - second.mean(axis=(1, 2), keepdims=True)
    # Window sums in two steps (along columns for the 3 column offsets, then along rows).
    row_sums = {dx: (second[:, :, margin - dx:size - margin - dx].sum(axis=2),
                     np.square(second[:, :, margin - dx:size - margin - dx]).sum(axis=2))
                for dx in (-1, 0, 1)}
    scores = []
    for dy in (-1, 0, 1):
        rows = slice(margin - dy, size - margin - dy)
        for dx in (-1, 0, 1):
            total, power = (sums[:, rows].sum(axis=1) for sums in row_sums[dx])
            spread = np.sqrt(np.maximum(power - total * total / (side * side), 0.0))
            dots = np.einsum("pij,pij->p", target, second[:, rows, margin - dx:size - margin - dx])
            scores.append(dots / np.maximum(spread, 1e-6))
    stacked = np.stack(scores)
    best = stacked.argmax(axis=0)
    return stacked.max(axis=0), best // 3 - 1, best % 3 - 1, stacked[4]


def shifted_by_whole_pixels(thumbnails: np.ndarray, rows: np.ndarray,
                            columns: np.ndarray) -> np.ndarray:
    """[P, S, S]: thumbnail p moved down rows[p] and right columns[p] pixels (ints), its edge
    pixels repeated into the gap: as `warped_correlation` moves them, so a fine shift f of the
    result is a shift of rows[p] + f of the original inside the compared window."""
    size = thumbnails.shape[-1]
    pixel = np.arange(size)
    source_rows = np.clip(pixel[None, :] - rows[:, None], 0, size - 1)
    source_columns = np.clip(pixel[None, :] - columns[:, None], 0, size - 1)
    return thumbnails[np.arange(len(thumbnails))[:, None, None], source_rows[:, :, None],
                      source_columns[:, None, :]]


def warped_correlation(first: np.ndarray, second: np.ndarray, shifts: Sequence[float],
                       scales: Sequence[float] = (1.0,), margin: int = 2,
                       column_shifts: Optional[Sequence[float]] = None,
                       chunk: int = 4096) -> np.ndarray:
    """Best correlation of `first` with `second` zoomed and shifted, on the inner window.

    A shifted copy of a 28-pixel image is shifted by a fraction of a 32-pixel thumbnail's
    pixel, so shifts are sub-pixel (bilinear); each warp is two matrix products per chunk.

    Args:
        first, second: uint8 [P, 32, 32] thumbnails, compared pairwise.
        shifts: offsets in pixels tried along each axis (all combinations).
        scales: zooms of `second` about its centre (a crop of c pixels a side of an n-pixel
            image, resized back, is a zoom of n / (n - 2c)).
        margin: border left out of the comparison (where the warp brings in blank pixels).
        column_shifts: offsets along columns, when not `shifts` (then `shifts` are the rows').

    Returns:
        float32 [P], in [-1, 1].
    """
    size = first.shape[-1]
    inner = slice(margin, size - margin)
    side = size - 2 * margin
    column_shifts = shifts if column_shifts is None else column_shifts
    warps = {(scale, shift): _resample_matrix(size, scale, shift)[inner]
             for scale in scales for shift in (*shifts, *column_shifts)}
    best = np.full(len(first), -1.0, np.float32)
    for start in range(0, len(first), chunk):
        target = _centred_units(first[start:start + chunk, inner, inner])
        count = len(target)
        columns = second[start:start + chunk].astype(np.float32).transpose(0, 2, 1)
        columns = columns.reshape(count * size, size)
        for scale in scales:
            for dy in shifts:
                rows = (columns @ warps[scale, dy].T).reshape(count, size, side)
                rows = rows.transpose(0, 2, 1).reshape(count * side, size)
                for dx in column_shifts:
                    warped = _centred_units((rows @ warps[scale, dx].T).reshape(count, -1))
                    np.maximum(best[start:start + count], np.einsum("ij,ij->i", target, warped),
                               out=best[start:start + count])
    return best


def _resample_matrix(size: int, scale: float, shift: float) -> np.ndarray:
    """float32 [size, size] bilinear resampling: zoom a row by `scale` about its centre, then
    move it by `shift` pixels (edge pixels repeat beyond the border)."""
    centre = (size - 1) / 2
    source = (np.arange(size) - centre - shift) / scale + centre
    low = np.clip(np.floor(source).astype(np.int64), 0, size - 2)
    weight = np.clip(source - low, 0.0, 1.0).astype(np.float32)
    matrix = np.zeros((size, size), np.float32)
    matrix[np.arange(size), low] = 1.0 - weight
    matrix[np.arange(size), low + 1] += weight
    return matrix


def _centred_units(pixels: np.ndarray) -> np.ndarray:
    """float32 [P, K]: each row of pixels minus its mean, scaled to length 1."""
    pixels = np.asarray(pixels, np.float32)
    rows = pixels.reshape(len(pixels), int(np.prod(pixels.shape[1:])))  # also for 0 rows
    rows = rows - rows.mean(axis=1, keepdims=True)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-6)


def hamming(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Bits that differ between two uint64 hash arrays: int [N]."""
    return np.bitwise_count(np.bitwise_xor(first, second)).astype(np.int64)
