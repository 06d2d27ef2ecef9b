"""Benchmark: local reads through `retrainer.io.storage` vs plain pathlib/numpy, and ram:// vs local.

The cache-hit path of a rerun reads every image (to hash it) and every `.npy` entry. This times,
in one run on the same files: (a) the plain pathlib/numpy calls the code made before remote paths
(the baseline), (b) the same reads through `retrainer.io.storage` on local paths (target: ratio ~1.0),
(c) through tf.io.gfile on ram:// (TensorFlow's in-memory file system: an upper bound on gfile's
own overhead, not a figure for GCS), and discovery of the folder, local vs ram://.

    python -m benchmarks.bench_storage --images 1000 [--smoke]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks import cli
from benchmarks.timing import best_of, machine_line
from retrainer.data.discovery import discover_images
from retrainer.io.storage import as_path, open_for_reading, read_bytes, upload_tree


def make_files(root: Path, count: int) -> tuple[list[Path], list[Path]]:
    """`count` small PNGs in 4 class folders, and one float32 [1280] .npy per image."""
    rng = np.random.default_rng(0)
    images, vectors = [], []
    for index in range(count):
        folder = root / "images" / f"class_{index % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        image = folder / f"{index:05d}.png"
        Image.fromarray(rng.integers(0, 255, (28, 28), np.uint8)).save(image)
        vector = root / "cache" / f"{index:05d}.npy"
        vector.parent.mkdir(exist_ok=True)
        np.save(vector, rng.random(1280, np.float32))
        images.append(image)
        vectors.append(vector)
    return images, vectors


def plain(images, vectors) -> None:
    for image, vector in zip(images, vectors):
        Path(image).read_bytes()
        np.load(vector, allow_pickle=False)


def through_storage(images, vectors) -> None:
    for image, vector in zip(images, vectors):
        read_bytes(image)
        with open_for_reading(vector) as stream:
            np.load(stream, allow_pickle=False)


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = cli.parse(parser, {"images": 20, "repeats": 1})
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        images, vectors = make_files(root, args.images)
        upload_tree(root, "ram://bench")
        ram_images = [as_path(f"ram://bench/{path.relative_to(root).as_posix()}") for path in images]
        ram_vectors = [as_path(f"ram://bench/{path.relative_to(root).as_posix()}")
                       for path in vectors]
        through_storage(images, vectors)  # warm the page cache and imports
        rows = {
            "reads: plain pathlib/numpy (baseline)": best_of(args.repeats,
                                                             lambda: plain(images, vectors)),
            "reads: retrainer.io.storage, local": best_of(args.repeats,
                                                       lambda: through_storage(images, vectors)),
            "reads: retrainer.io.storage, ram://": best_of(
                args.repeats, lambda: through_storage(ram_images, ram_vectors)),
            "discovery, local": best_of(args.repeats,
                                        lambda: discover_images(root / "images")),
            "discovery, ram://": best_of(args.repeats,
                                         lambda: discover_images("ram://bench/images")),
        }
    baseline = rows["reads: plain pathlib/numpy (baseline)"]
    print(f"{args.images} images + {args.images} .npy entries, best of {args.repeats}; "
          f"{machine_line()}")
    print(f"{'what':45s} {'seconds':>8s} {'x baseline':>10s}")
    for name, seconds in rows.items():
        ratio = f"{seconds / baseline:10.2f}" if name.startswith("reads") else f"{'':>10s}"
        print(f"{name:45s} {seconds:8.3f} {ratio}")
    print(f"discovery ram:// / local: {rows['discovery, ram://'] / rows['discovery, local']:.2f}")


if __name__ == "__main__":
    main()
