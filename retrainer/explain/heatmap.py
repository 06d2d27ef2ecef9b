"""Heat maps in the input image's own coordinates: the peak, the picture, the file names.

A map of h x w cells covers the whole image, whatever its size: the network saw the image resized
to its input size (aspect ignored), so cell (i, j) covers rows i*H/h..(i+1)*H/h and columns
j*W/w..(j+1)*W/w of the upright image (EXIF orientation applied, as decoding does). Upsampled
bilinearly, the map is highest at a cell centre, so the peak is the centre of the hottest cell.
"""

from __future__ import annotations

import io
import os
import unicodedata
from pathlib import PurePath
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from retrainer.data.decoding import load_image
from retrainer.io.storage import AnyPath, is_url, open_for_reading

MAX_PICTURE_SIDE = 1024  # larger images are shown shrunk; the peak stays in their own pixels
HEAT_OPACITY = (0.15, 0.6)  # opacity of the colour over the image at heat 0 and at heat 1
# matplotlib's "jet" (`matplotlib._cm._jet_data`): (x, y below x, y above x) per channel, made
# into the same 256 colours here, as its `LinearSegmentedColormap` makes them: matplotlib's
# import (~0.1 s of CPU holding the interpreter lock) is then left to the report's pictures
JET = {"red": ((0.00, 0, 0), (0.35, 0, 0), (0.66, 1, 1), (0.89, 1, 1), (1.00, 0.5, 0.5)),
       "green": ((0.000, 0, 0), (0.125, 0, 0), (0.375, 1, 1), (0.640, 1, 1), (0.910, 0, 0),
                 (1.000, 0, 0)),
       "blue": ((0.00, 0.5, 0.5), (0.11, 1, 1), (0.34, 1, 1), (0.65, 0, 0), (1.00, 0, 0))}
COLOURS = 256  # matplotlib's default number of a colormap's colours
MAX_NAME_BYTES = 200  # of the image's name in a heat map's file name (file systems allow 255)
_EXIF_ORIENTATION = 0x0112
_SIDEWAYS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def peak(heat: np.ndarray, size: tuple[int, int]) -> tuple[int, int]:
    """The heat map's maximum as [y, x] pixel coordinates of an image of `size` (height, width).

    Args:
        heat: float [h, w] heat map over the whole image.
        size: (H, W) of the image.

    Returns:
        (y, x) with 0 <= y < H and 0 <= x < W: the centre of the hottest cell (the first of ties).
    """
    rows, columns = heat.shape
    row, column = np.unravel_index(int(np.argmax(heat)), heat.shape)
    height, width = size
    return (min(height - 1, int((row + 0.5) * height / rows)),
            min(width - 1, int((column + 0.5) * width / columns)))


def upsampled(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 [H, W]: the map resized bilinearly (pixel centres aligned) to `size`."""
    height, width = size
    picture = Image.fromarray(heat.astype(np.float32), mode="F")
    return np.asarray(picture.resize((width, height), Image.Resampling.BILINEAR), np.float32)


def upright_size(path: AnyPath) -> tuple[int, int]:
    """(height, width) of the image as shown (EXIF orientation applied), from its header."""
    with (open_for_reading(path) if is_url(path) else open(path, "rb") as stream,
          Image.open(stream) as image):
        width, height = image.size
        if image.getexif().get(_EXIF_ORIENTATION, 1) in _SIDEWAYS:
            width, height = height, width
    return height, width


def picture_size(size: tuple[int, int], max_side: int = MAX_PICTURE_SIDE) -> tuple[int, int]:
    """`size` shrunk (aspect kept) so that neither side exceeds `max_side`."""
    height, width = size
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def overlay(pixels: np.ndarray, heat: np.ndarray, mark: Optional[tuple[int, int]] = None,
            size: Optional[tuple[int, int]] = None) -> bytes:
    """The image with the heat map laid over it, as PNG bytes.

    Args:
        pixels: uint8 [H, W, 3] RGB.
        heat: float [h, w] in [0, 1], any resolution (upsampled to H x W).
        mark: (y, x) in `pixels`' coordinates to ring (the peak), or None.
        size: (height, width) to draw it at, the pixels resized first (a report's gallery shows
            it at its thumbnails' size: a quarter of the blending and encoding of 224 x 224);
            None: at the pixels' own size.
    """
    if size is not None and size != pixels.shape[:2]:
        pixels = np.asarray(Image.fromarray(pixels).resize(size[::-1], Image.Resampling.BILINEAR))
    height, width = pixels.shape[:2]
    values = np.clip(upsampled(heat, (height, width)), 0.0, 1.0)
    colours = jet(values) * 255.0
    low, high = HEAT_OPACITY
    opacity = (low + (high - low) * values)[..., np.newaxis]
    blended = pixels.astype(np.float32) * (1 - opacity) + colours * opacity
    picture = Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))
    if mark is not None:
        y, x = mark
        radius = max(3, round(min(height, width) / 40))
        draw = ImageDraw.Draw(picture)
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=(255, 255, 255),
                     width=max(1, radius // 3))
    buffer = io.BytesIO()
    # zlib level 1: the same pixels in a file ~20 % larger, encoded in a third of level 6's time
    # (a 224x224 heat map: 4.5 ms instead of 12.5, most of the report's heat-map section)
    picture.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def jet(values: np.ndarray) -> np.ndarray:
    """float64 [..., 3] RGB in [0, 1]: the colours of `values` (float, [0, 1]; NaN: black) as
    matplotlib's "jet" colormap gives them (its 256 colours, a value's colour by
    floor(value * 256), 1 the last)."""
    scaled = np.array(values, copy=True)
    scaled *= COLOURS  # in the values' own dtype, as matplotlib's colormaps multiply
    scaled[scaled == COLOURS] = COLOURS - 1
    missing = np.isnan(scaled)
    scaled[missing] = 0
    colours = _JET_TABLE.take(np.clip(scaled.astype(int), 0, COLOURS - 1), axis=0)
    colours[missing] = 0.0
    return colours


def _lookup_table(segments: tuple[tuple[float, float, float], ...]) -> np.ndarray:
    """float64 [COLOURS]: one channel's colours, made from its segments as matplotlib's
    `colors._create_lookup_table` makes them (linear between the x points)."""
    table = np.array(segments, np.float64)
    x, below, above = table[:, 0] * (COLOURS - 1), table[:, 1], table[:, 2]
    at = (COLOURS - 1) * np.linspace(0, 1, COLOURS)
    index = np.searchsorted(x, at)[1:-1]
    distance = (at[1:-1] - x[index - 1]) / (x[index] - x[index - 1])
    return np.clip(np.concatenate([[above[0]], distance * (below[index] - above[index - 1])
                                   + above[index - 1], [below[-1]]]), 0.0, 1.0)


_JET_TABLE = np.stack([_lookup_table(JET[channel]) for channel in ("red", "green", "blue")],
                      axis=1)


def image_overlay(path: AnyPath, heat: np.ndarray) -> tuple[bytes, tuple[int, int]]:
    """The picture of one image file's heat map and the peak in the file's own pixels.

    Returns:
        (PNG bytes of the image shrunk to at most MAX_PICTURE_SIDE with the map over it and its
        peak ringed, (y, x) peak in the upright image's own pixel coordinates).

    Raises:
        UnreadableImageError: the file cannot be decoded (any more).
    """
    size = upright_size(path)
    shown = picture_size(size)
    y, x = peak(heat, size)
    mark = (int(y * shown[0] / size[0]), int(x * shown[1] / size[1]))
    return overlay(load_image(path, shown), heat, mark), (y, x)


class HeatmapNames:
    """Collision-free `DIR/<image name>.png` paths that never leave DIR, in input order."""

    def __init__(self, folder: AnyPath) -> None:
        self.folder = folder
        self._taken: set[str] = set()

    def path_for(self, image: os.PathLike[str] | str) -> AnyPath:
        """DIR/<file name of `image`>.png; a repeated name gets -2, -3, ... before .png."""
        name = safe_name(PurePath(os.fspath(image)).name)
        candidate, number = f"{name}.png", 1
        while candidate.casefold() in self._taken:  # case-insensitive file systems too
            number += 1
            candidate = f"{name}-{number}.png"
        self._taken.add(candidate.casefold())
        return self.folder / candidate


def safe_name(name: str) -> str:
    """`name` as one harmless path component: no separators, control characters or dot names,
    at most MAX_NAME_BYTES of UTF-8."""
    cleaned = "".join("_" if char in "/\\\0" or unicodedata.category(char).startswith("C")
                      else char for char in name)
    encoded = cleaned.encode("utf-8")[:MAX_NAME_BYTES]
    cleaned = encoded.decode("utf-8", errors="ignore")
    if cleaned.strip(". ") == "":
        cleaned = f"image{cleaned}"
    return cleaned



def normalized(raw: np.ndarray) -> np.ndarray:
    """A raw class map made a heat map: ReLU, then scale to [0, 1]; with no positive evidence,
    the min-max scaled raw map."""
    positive = np.maximum(raw, 0)
    if positive.max() > 0:
        return (positive / positive.max()).astype(np.float32)
    spread = raw.max() - raw.min()
    if spread <= 0:
        return np.zeros_like(raw, np.float32)
    return ((raw - raw.min()) / spread).astype(np.float32)
