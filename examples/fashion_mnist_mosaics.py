"""A real multi-label dataset: 2x2 mosaics of Fashion-MNIST items, labelled with the classes present.

Each 56x56 grey PNG holds four cells; each cell is empty (black) with probability `--empty`, else
an item drawn from Fashion-MNIST's train or t10k idx files (Debian's dataset-fashion-mnist). At least
one cell is filled. Every source item is used at most once, so no two mosaics (hence no two splits)
share an item. The labels are the distinct class names present, written to `<out>/labels.csv`
(`path,labels`, `;`-separated) for `retrain --labels_csv <out>/labels.csv --image_dir <out>/images
--multi_label`. Deterministic for a given seed; built beside `out` and renamed into place.

    python examples/fashion_mnist_mosaics.py --idx-dir .cache/fashion-mnist --out data/mosaics \
        --count 4000
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import click
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fashion_mnist import (  # noqa: E402
    CLASS_NAMES,
    IDX_FILES,
    built_with,
    idx_dir_option,
    read_images,
    read_labels,
)

CELL = 28
MARKER = ".mosaics.json"


def write_mosaics(idx_dir: Path, out: Path, count: int, empty: float = 0.25,
                  seed: int = 0) -> Path:
    """Build `out`/images/mosaic_<i>.png and `out`/labels.csv; returns `out` (absolute).

    Raises:
        FileNotFoundError: an idx file is missing. ValueError: more items needed than exist.
    """
    out = Path(os.path.abspath(out))
    settings = {"count": count, "empty": empty, "seed": seed}
    if built_with(out, MARKER) == settings:
        return out
    items, classes = _source_items(idx_dir)
    rng = np.random.default_rng(seed)
    filled = rng.random((count, 4)) >= empty
    filled[~filled.any(axis=1), rng.integers(0, 4)] = True  # at least one item per mosaic
    if filled.sum() > len(items):
        raise ValueError(f"{filled.sum()} items needed, {len(items)} available")
    order = rng.permutation(len(items))
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (staging / "images").mkdir()
        rows = []
        used = 0
        for index in range(count):
            mosaic = np.zeros((2 * CELL, 2 * CELL), np.uint8)
            present = set()
            for cell in np.flatnonzero(filled[index]):
                item = order[used]
                used += 1
                row, column = divmod(int(cell), 2)
                mosaic[row * CELL:(row + 1) * CELL, column * CELL:(column + 1) * CELL] = items[item]
                present.add(int(classes[item]))
            name = f"mosaic_{index:05d}.png"
            Image.fromarray(mosaic).save(staging / "images" / name)
            rows.append((f"{name}", ";".join(CLASS_NAMES[c] for c in sorted(present))))
        with open(staging / "labels.csv", "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(("path", "labels"))
            writer.writerows(rows)
        (staging / MARKER).write_text(json.dumps(settings) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _source_items(idx_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, 28, 28] items and uint8 [N] classes of both idx subsets."""
    pixels, labels = [], []
    for images_name, labels_name in IDX_FILES.values():
        for name in (images_name, labels_name):
            if not (Path(idx_dir) / name).is_file():
                raise FileNotFoundError(f"{Path(idx_dir) / name} is missing; run: bash "
                                        f"scripts/fetch_fashion_mnist.sh {idx_dir}")
        subset_labels = read_labels(Path(idx_dir) / labels_name)
        labels.append(subset_labels)
        pixels.append(read_images(Path(idx_dir) / images_name, len(subset_labels)))
    return np.concatenate(pixels), np.concatenate(labels)


@click.command()
@idx_dir_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to create: images/ and labels.csv.")
@click.option("--count", type=click.IntRange(min=1), default=4000, show_default=True,
              help="Mosaics to write.")
@click.option("--empty", type=click.FloatRange(0, 1, max_open=True), default=0.25,
              show_default=True, help="Chance that a cell is left black.")
@click.option("--seed", type=int, default=0, show_default=True)
def main(idx_dir: Path, out: Path, count: int, empty: float, seed: int) -> None:
    """Write 2x2 Fashion-MNIST mosaics and their labels.csv for `retrain --multi_label`."""
    try:
        folder = write_mosaics(idx_dir, out, count, empty, seed)
    except (OSError, ValueError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(folder)


if __name__ == "__main__":
    main()
