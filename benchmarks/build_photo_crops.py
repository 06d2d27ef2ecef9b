"""A folder-per-class set of real photographs: random crops of each source photo, one class each.

Sources: the nature photographs of Debian's `mate-backgrounds` (/usr/share/backgrounds/mate/nature,
1280x1024 to 2560x1920 JPEGs) and scikit-image's colour photos (astronaut, chelsea, coffee, rocket,
hubble_deep_field, immunohistochemistry, retina). Each source is a class; its images
are `--per-class` square crops (30-70 % of the shorter side, random position, random mirror),
resized to 256x256 JPEGs. Crops of one photo overlap, so held-out crops are easier than new photos
would be: the set is for measuring what a photo model does with images unlike any photo (the
novelty score), not for accuracy claims. Deterministic for a seed; built beside `out` and renamed.

    python -m benchmarks.build_photo_crops --out /work/team/data/photo_crops --per-class 60
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

MATE_NATURE = Path("/usr/share/backgrounds/mate/nature")
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                  "immunohistochemistry", "retina")
SIZE = 256


def sources() -> Iterator[tuple[str, Callable[[], Image.Image]]]:
    """(class name, loader of the RGB photo) for every source found."""
    for path in sorted(MATE_NATURE.glob("*.jpg")):
        yield path.stem.lower(), lambda path=path: Image.open(path).convert("RGB")
    import skimage.data

    for name in SKIMAGE_PHOTOS:
        yield name, lambda name=name: Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def build(out: Path, per_class: int, seed: int) -> Path:
    out = Path(os.path.abspath(out))
    if out.is_dir():
        return out
    found = list(sources())
    if len(found) < 2:
        raise SystemExit(f"fewer than 2 photos found; apt-get install mate-backgrounds "
                         f"(looked in {MATE_NATURE})")
    rng = np.random.default_rng(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, load in found:
            photo = load()
            (staging / name).mkdir()
            short = min(photo.size)
            for index in range(per_class):
                side = int(short * rng.uniform(0.3, 0.7))
                left = int(rng.integers(0, photo.width - side + 1))
                top = int(rng.integers(0, photo.height - side + 1))
                crop = photo.crop((left, top, left + side, top + side)).resize(
                    (SIZE, SIZE), Image.Resampling.LANCZOS)
                if rng.random() < 0.5:
                    crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                crop.save(staging / name / f"crop_{index:03d}.jpg", quality=90)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    print(build(arguments.out, arguments.per_class, arguments.seed))


if __name__ == "__main__":
    main()
