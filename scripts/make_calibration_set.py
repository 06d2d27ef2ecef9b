"""Write the int8 engine's fixed calibration set: real photos from scikit-image's `skimage.data`.

    PYTHONPATH=. python scripts/make_calibration_set.py

Two 128x128 JPEG views (whole photo, centre half) of each of 15 photos: portraits, animals,
objects, textures, microscopy, astronomy and text, so the activation ranges cover what users feed
the extractor. Run once; the output ships with the package (retrainer/engines/calibration/), and the
int8 extractor id names its digest, so regenerating it with different pixels gives a new cache
namespace.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry",
          "hubble_deep_field", "coins", "moon", "brick", "grass", "gravel", "retina", "page", "text")
SIDE = 128
OUT = Path(__file__).resolve().parent.parent / "retrainer" / "engines" / "calibration"


def views(pixels: np.ndarray) -> list[np.ndarray]:
    height, width = pixels.shape[:2]
    centre = pixels[height // 4: height - height // 4, width // 4: width - width // 4]
    return [pixels, centre]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        for index, view in enumerate(views(np.asarray(image))):
            small = Image.fromarray(np.ascontiguousarray(view)).resize((SIDE, SIDE), Image.LANCZOS)
            small.save(OUT / f"{name}_{index}.jpg", quality=90)
    print(f"wrote {len(PHOTOS) * 2} images to {OUT}")


if __name__ == "__main__":
    main()
