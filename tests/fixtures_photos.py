"""Real pictures in the shapes users bring: clipart with alpha cut from scikit-image's photographs.

- `photo(name)`: one of scikit-image's bundled pictures as an RGB PIL image.
- `write_clipart_dir(root, classes, per_class)`: class folders of RGBA PNG "clipart": random crops
  of the real photos, rotated, cut out by a random polygon on a transparent background, with a
  text file and a sound file mixed in (discovery must skip them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

# Colour photographs and drawings shipped inside scikit-image (no download).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry", "retina",
          "colorwheel", "logo", "motorcycle")


def photo(name: str) -> Image.Image:
    """scikit-image's picture `name` (see PHOTOS, or any `skimage.data` function) as RGB."""
    import skimage.data

    pixels = (skimage.data.stereo_motorcycle()[0] if name == "motorcycle"
              else getattr(skimage.data, name)())
    if pixels.dtype != np.uint8:
        pixels = (np.clip(pixels, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(pixels).convert("RGB")


def clipart(source: Image.Image, rng: np.random.Generator, size: int = 96) -> Image.Image:
    """An RGBA cut-out of `source`: a rotated random crop inside a random transparent polygon."""
    width, height = source.size
    side = int(rng.integers(min(width, height) // 4, min(width, height) // 2))
    left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    crop = source.convert("RGBA").crop((left, top, left + side, top + side))
    crop = crop.rotate(float(rng.uniform(0, 360))).resize((size, size))
    mask = Image.new("L", (size, size), 0)
    corners = rng.integers(0, size, (int(rng.integers(3, 8)), 2))
    ImageDraw.Draw(mask).polygon([(int(x), int(y)) for x, y in corners], fill=255)
    crop.putalpha(mask)
    return crop


def write_clipart_dir(root: Path, classes: Sequence[str] = ("icons_a", "icons_b"),
                      per_class: int = 4, seed: int = 0) -> Path:
    """Class folders of RGBA PNG clipart cut from the real photos, plus a text and a sound file
    in each. Returns `root`."""
    rng = np.random.default_rng(seed)
    sources = [photo(name) for name in PHOTOS]
    for name in classes:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            clipart(sources[int(rng.integers(len(sources)))], rng).save(
                folder / f"icon_{index:02d}.png")
        (folder / "readme.txt").write_text("not an image")
        (folder / "ding.wav").write_bytes(b"RIFF\0\0\0\0WAVEfmt ")
    return root
