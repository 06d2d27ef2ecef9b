"""Build a hard small real-photo set: one seeded 48x48 patch of each of the first N crops per class.

Input: a class-folder set of photo crops (e.g. /work/team/data/photo_crops_60: 256x256 crops of
scikit-image's sample images and Debian mate-backgrounds' nature photographs). Small patches of
sky, grass or texture look alike across photographs, so the classes overlap (about 80-90 % test
accuracy), unlike the whole crops (100 %). Used for the `--search` table in docs/training.md.

    python -m benchmarks.build_photo_patches SOURCE OUT [--per-class 40] [--size 48]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--size", type=int, default=48)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for folder in sorted(path for path in args.source.iterdir() if path.is_dir()):
        (args.out / folder.name).mkdir(parents=True, exist_ok=True)
        for path in sorted(folder.iterdir())[:args.per_class]:
            image = Image.open(path).convert("RGB")
            left = rng.integers(0, image.width - args.size)
            top = rng.integers(0, image.height - args.size)
            patch = image.crop((left, top, left + args.size, top + args.size))
            patch.save(args.out / folder.name / path.name, quality=90)


if __name__ == "__main__":
    main()
