"""Build a small real-photo class-folder set: 20 photographs, many camera-like shots of each.

Sources (all shipped by packages, none downloaded at run time): the 12 nature photographs of
Debian's `mate-backgrounds` (flowers, grass, leaves, a dune, a storm, a water drop, wood) and the
8 colour photographs scikit-image ships (astronaut, cat, coffee, Hubble deep field, stained
tissue, motorcycle, retina, rocket). Each class is one photograph; its images are
`benchmarks.photos.photo_set` shots of it (a random crop of 12-30 % of the picture's side, mirrored
half the time, 240x180, sensor-like noise, JPEG): close-ups of parts of the scene, so sky, grass,
petals or tissue of one photograph must be told from those of another, as a phone user's
close-ups of one place or object would be. Used for the `--search` table in docs/training.md.

    python -m benchmarks.build_photo_classes OUT [--count 800]
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from skimage import data as skimage_data

from benchmarks import cli
from benchmarks.photos import PHOTOS_ENV, debian_photographs, photo_set

SIZE = (240, 180)
CROP = (0.12, 0.3)
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry",
                  "stereo_motorcycle", "retina", "rocket")


def source_folder(folder: Path) -> Path:
    """`folder` with the 20 source photographs as JPEGs (quality 95 for scikit-image's PNGs)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for path in debian_photographs():
        shutil.copyfile(path, folder / path.name)
    for name in SKIMAGE_PHOTOS:
        picture = getattr(skimage_data, name)()
        if isinstance(picture, tuple):  # the stereo pair: its left view
            picture = picture[0]
        pixels = np.asarray(picture)[..., :3]
        Image.fromarray(pixels).save(folder / f"skimage_{name}.jpg", quality=95)
    return folder


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("out", type=Path, nargs="?")
    parser.add_argument("--count", type=int, default=800)
    args = cli.parse(parser, {"count": 40})
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch) / "photos"
        os.environ[PHOTOS_ENV] = str(source_folder(Path(scratch) / "sources"))
        photos = photo_set(out, args.count, SIZE, crop=CROP)
        print(f"{len(photos)} photos of {len({path.parent for path in photos})} classes in {out}")


if __name__ == "__main__":
    main()
