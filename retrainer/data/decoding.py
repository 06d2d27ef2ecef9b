"""Decode stage: any image file Pillow reads -> uint8 RGB pixels at the extractor's input size.

One function for training and for label-image, so both see exactly the same pixels. The file's
content decides the format (a PNG named .jpg decodes); the extension only decides what discovery
picks up. Runs on worker threads (the bottleneck stage's, tf.data's): Pillow releases the GIL while
decoding and resizing, and nothing here touches shared state.

Choices (documented in docs/data.md):
- transparency is composited on white (`ALPHA_BACKGROUND`), the way viewers and web pages show it;
- EXIF orientation is applied, so a phone photo is upright;
- animations (GIF, APNG, WebP) and multi-page files contribute their first frame;
- 16-bit and 32-bit integer images are scaled from 0..65535, float images from 0..1;
- images that would decode to more than `MAX_IMAGE_PIXELS` pixels are refused from the header,
  before any pixel is decoded (JPEGs are first shrunk in the decoder by 1/2, 1/4 or 1/8 when the
  target size allows, so large camera JPEGs up to Pillow's own hard limit still load, fast);
- resizing ignores the aspect ratio (like retrain.py's graph) with Pillow's antialiased bilinear
  filter.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from retrainer.io.storage import is_url, read_bytes

# Pillow's default decompression-bomb threshold (1 GiB of 24-bit pixels / 4 / 3): ~89.5 M pixels.
MAX_IMAGE_PIXELS = 89_478_485
ALPHA_BACKGROUND = (255, 255, 255)
RESAMPLE = Image.Resampling.BILINEAR
# Shrink by whole factors (box filter) first while the image is over 3x the target: much faster on
# big PNGs, visually indistinguishable from a plain antialiased resize.
REDUCING_GAP = 3.0

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
# What a broken or hostile file makes Pillow raise while opening or decoding.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error,
                  Image.DecompressionBombError)
# Pillow warns at open about anything over its limit, even a camera JPEG the draft mode then decodes
# small; `_check_pixel_count` refuses what is really too large, with a clearer reason.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class UnreadableImageError(Exception):
    """An image file that cannot be decoded. Not a RetrainerError: callers choose skip or fail.

    Attributes:
        path: the file (or source name) that failed.
        reason: a short human reason, e.g. "empty file (0 bytes)".
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{os.fspath(path)}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason


def load_image(path: str | os.PathLike[str], size: tuple[int, int]) -> np.ndarray:
    """Decode an image file to RGB pixels at `size`.

    Args:
        path: the image file; its content, not its extension, decides the format.
        size: (height, width) of the result.

    Returns:
        uint8 [height, width, 3] RGB array.

    Raises:
        UnreadableImageError: missing, empty, truncated, not an image, or over the pixel limit.
    """
    try:
        if is_url(path):  # gs://, ram://: through tf.io.gfile
            return decode_image(read_bytes(path), size, path)
        if Path(path).stat().st_size == 0:
            raise UnreadableImageError(path, "empty file (0 bytes)")
        with open(path, "rb") as stream:
            return _decode(stream, size, path)
    except OSError as error:
        raise UnreadableImageError(path, f"cannot read file ({error.strerror or error})") from error


def decode_image(
    data: bytes, size: tuple[int, int], source: str | os.PathLike[str] = "<bytes>",
    out: np.ndarray | None = None, thumbnail: np.ndarray | None = None,
) -> np.ndarray:
    """Like `load_image`, for image bytes already in memory (e.g. read from stdin).

    Args:
        data: the encoded image.
        size: (height, width) of the result.
        source: the name used in error messages.
        out: a writable uint8 [height, width, 3] array to write the pixels into (e.g. a row of
            a batch), instead of a new one; left as it was if the image is unreadable.
        thumbnail: a writable uint8 [h, w, 3] array, filled in the same pass with the image
            resized to (h, w) as `size` would be (the audit's signatures): no second decode.

    Returns:
        uint8 [height, width, 3] RGB array (`out` when given).

    Raises:
        UnreadableImageError: as `load_image`.
    """
    if not data:
        raise UnreadableImageError(source, "empty file (0 bytes)")
    return _decode(io.BytesIO(data), size, source, out, thumbnail)


def _decode(
    stream: BinaryIO, size: tuple[int, int], source: str | os.PathLike[str],
    out: np.ndarray | None = None, thumbnail: np.ndarray | None = None,
) -> np.ndarray:
    height, width = _check_size(size)
    try:
        with Image.open(stream) as image:
            # JPEG only: let libjpeg decode at 1/2..1/8 scale, never below the target in either
            # orientation (EXIF rotation is applied later).
            side = max(height, width)
            image.draft(None, (side, side))
            _check_pixel_count(image, source)
            image.load()
            upright = _apply_orientation(image)
            # Grey: resized as one channel, then copied thrice -- the same pixels as resizing
            # the RGB image (Pillow filters each channel alike), for a third of the work.
            grey = upright.mode == "L" and "transparency" not in upright.info
            picture = upright if grey else _to_rgb(upright, source)
            if thumbnail is not None:
                small = np.asarray(_resized(picture, thumbnail.shape[:2]))
                thumbnail[...] = small[..., np.newaxis] if grey else small
            resized = _resized(picture, (height, width))
            if grey:
                resized = Image.merge("RGB", (resized,) * 3)  # 2.5x faster than convert
            pixels = np.frombuffer(resized.tobytes(), np.uint8).reshape(height, width, 3)
            if out is None:
                return pixels
            out[...] = pixels
            return out
    except UnidentifiedImageError as error:
        stream.seek(0)
        raise UnreadableImageError(source, _describe_unknown(stream.read(512))) from error
    except Image.DecompressionBombError as error:  # Pillow's own hard limit, at open
        raise UnreadableImageError(source, f"too large to decode safely ({error})") from error
    except _DECODE_ERRORS as error:
        raise UnreadableImageError(source, f"truncated or corrupt image data ({error})") from error


def _resized(picture: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`picture` (grey or RGB) resized to (height, width), aspect ratio ignored."""
    height, width = size
    return picture.resize((width, height), RESAMPLE, reducing_gap=REDUCING_GAP)


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"size must be (height, width) with both >= 1. Received: size={size!r}")
    return int(height), int(width)


def _check_pixel_count(image: Image.Image, source: str | os.PathLike[str]) -> None:
    """Refuse from the header, before decoding: a tiny file can declare gigapixels."""
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise UnreadableImageError(
            source,
            f"too large to decode safely: {width}x{height} = {width * height / 1e6:.1f} M pixels "
            f"(limit {MAX_IMAGE_PIXELS / 1e6:.1f} M); downscale it first",
        )


def _apply_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip per the EXIF Orientation tag (phones store pixels sideways)."""
    orientation = image.getexif().get(0x0112, 1)  # ExifTags.Base.Orientation
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(image)
    return image


def _to_rgb(image: Image.Image, source: str | os.PathLike[str]) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency composited on `ALPHA_BACKGROUND`."""
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        pixels = np.asarray(image, dtype=np.float32) / 257.0
        return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        pixels = np.asarray(image, dtype=np.float32) * 255.0
        return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flattened = Image.new("RGB", rgba.size, ALPHA_BACKGROUND)
        flattened.paste(rgba, mask=rgba.getchannel("A"))
        return flattened
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise UnreadableImageError(source, f"unsupported colour mode {image.mode}") from error


def _describe_unknown(head: bytes) -> str:
    """A short reason for content Pillow does not recognise."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 3:  # not just a character cut at the end of `head`
            return "not an image (unrecognised file format)"
        text = head[: error.start].decode("utf-8")
    if "<html" in text.lower() or "<!doctype" in text.lower():
        return "not an image (an HTML page)"
    if all(char.isprintable() or char.isspace() for char in text):
        return "not an image (a text file)"
    return "not an image (unrecognised file format)"
