"""Turn Fashion-MNIST's raw idx files into a folder-per-class image dataset for `retrain`.

Real, small, offline demo and test data: the idx files come from Debian's dataset-fashion-mnist
(`bash scripts/fetch_fashion_mnist.sh .cache/fashion-mnist`). The first N images of each class, in
file order, become `<out>/<class name>/<subset>_<index>.png` (28x28 grayscale, or resized) — the
same input always gives the same folder. The folder is built next to `out` and renamed into place,
so an interrupted run never leaves half a dataset; rerunning with the same settings does nothing.

    python examples/fashion_mnist.py --idx-dir .cache/fashion-mnist --out data/fashion_mnist \
        --per-class 100 --subset train
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import click
import numpy as np
from PIL import Image

# Index order = Fashion-MNIST's label values; names made folder-safe ("T-shirt/top").
CLASS_NAMES = (
    "T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot",
)
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "t10k": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG"}
MARKER = ".fashion_mnist.json"  # hidden, so retrain ignores it; says what built the folder
_UBYTE = 0x08


def read_idx_header(stream) -> tuple[int, ...]:
    """Read an idx header (magic 0 0 type ndim, then ndim big-endian uint32 sizes).

    Returns:
        The array's shape. Raises ValueError for anything but unsigned-byte idx data.
    """
    magic = stream.read(4)
    if len(magic) != 4 or magic[:2] != b"\0\0" or magic[2] != _UBYTE:
        raise ValueError(f"not an unsigned-byte idx file (magic {magic!r})")
    ndim = magic[3]
    return struct.unpack(f">{ndim}I", stream.read(4 * ndim))


def read_labels(path: Path) -> np.ndarray:
    """uint8 [N] class indices from a labels idx .gz file."""
    with gzip.open(path, "rb") as stream:
        (count,) = read_idx_header(stream)
        return np.frombuffer(stream.read(count), dtype=np.uint8)


def read_images(path: Path, count: int) -> np.ndarray:
    """uint8 [count, 28, 28]: the first `count` images of an images idx .gz file (reads no more)."""
    with gzip.open(path, "rb") as stream:
        total, rows, cols = read_idx_header(stream)
        count = min(count, total)
        pixels = np.frombuffer(stream.read(count * rows * cols), dtype=np.uint8)
    return pixels.reshape(count, rows, cols)


def first_per_class(labels: np.ndarray, per_class: int) -> list[np.ndarray]:
    """For each class, the indices of its first `per_class` images (in file order)."""
    chosen = []
    for class_index, name in enumerate(CLASS_NAMES):
        indices = np.flatnonzero(labels == class_index)
        if len(indices) < per_class:
            raise ValueError(f"only {len(indices)} {name} images, {per_class} requested")
        chosen.append(indices[:per_class])
    return chosen


def write_image_folder(
    idx_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    per_class: int,
    subset: str = "train",
    size: int = 28,
    image_format: str = "png",
) -> Path:
    """Build `out`/<class>/<subset>_<index>.<ext> from the idx files in `idx_dir`.

    Args:
        idx_dir: folder with the four Fashion-MNIST idx .gz files.
        out: dataset folder to create; replaced only if an earlier run of this built it.
        per_class: images per class (train has 6000 of each class, t10k 1000).
        subset: "train" or "t10k".
        size: side of the written square images (28 = the originals, unresized).
        image_format: "png" (lossless) or "jpg".

    Returns:
        The dataset folder, absolute.

    Raises:
        FileNotFoundError: an idx file is missing. FileExistsError: `out` holds other files.
        ValueError: bad subset, format or count.
    """
    if subset not in IDX_FILES or image_format not in IMAGE_FORMATS or per_class < 1 or size < 1:
        raise ValueError(
            f"subset must be one of {sorted(IDX_FILES)}, image_format one of "
            f"{sorted(IMAGE_FORMATS)}, per_class and size >= 1. Received: {subset=}, "
            f"{image_format=}, {per_class=}, {size=}"
        )
    out = Path(os.path.abspath(out))
    settings = {"subset": subset, "per_class": per_class, "size": size, "format": image_format}
    if built_with(out) == settings:
        return out
    if out.exists() and built_with(out) is None and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and was not made by this script; choose another --out")

    images_path, labels_path = (Path(idx_dir) / name for name in IDX_FILES[subset])
    for path in (images_path, labels_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing; run: bash scripts/fetch_fashion_mnist.sh {idx_dir}"
            )
    chosen = first_per_class(read_labels(labels_path), per_class)
    pixels = read_images(images_path, int(max(indices[-1] for indices in chosen)) + 1)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, indices in zip(CLASS_NAMES, chosen):
            (staging / name).mkdir()
            for index in indices:
                image = Image.fromarray(pixels[index])
                if size != image.width:
                    image = image.resize((size, size), Image.Resampling.BICUBIC)
                image.save(staging / name / f"{subset}_{index:05d}.{image_format}",
                           IMAGE_FORMATS[image_format])
        (staging / MARKER).write_text(json.dumps(settings, indent=2) + "\n")
        if out.exists():  # empty, or an earlier build of ours with other settings
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def built_with(out: Path, marker: str = MARKER) -> dict | None:
    """The settings an earlier build recorded in `out`/`marker`, or None."""
    try:
        return json.loads((out / marker).read_text())
    except (OSError, ValueError):
        return None


idx_dir_option = click.option(
    "--idx-dir", type=click.Path(file_okay=False, path_type=Path),
    default=Path(".cache/fashion-mnist"), show_default=True,
    help="Folder with the four Fashion-MNIST idx .gz files.")


@click.command()
@idx_dir_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Dataset folder to create (one sub-folder per class).")
@click.option("--per-class", type=click.IntRange(min=1), default=100, show_default=True,
              help="Images per class (train: up to 6000, t10k: up to 1000).")
@click.option("--subset", type=click.Choice(sorted(IDX_FILES)), default="train", show_default=True)
@click.option("--size", type=click.IntRange(min=1), default=28, show_default=True,
              help="Side of the square images written (28 = original size).")
@click.option("--format", "image_format", type=click.Choice(sorted(IMAGE_FORMATS)),
              default="png", show_default=True)
def main(idx_dir: Path, out: Path, per_class: int, subset: str, size: int,
         image_format: str) -> None:
    """Write a folder-per-class Fashion-MNIST image dataset for `retrain --image_dir`."""
    try:
        folder = write_image_folder(idx_dir, out, per_class, subset, size, image_format)
    except (OSError, ValueError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(folder)


if __name__ == "__main__":
    main()
