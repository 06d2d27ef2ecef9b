"""What discovery (or a manifest) hands the run: the images, their classes and splits.

`ImageCollection` lists every image as an `ImageFile`, in a deterministic order; at a million
images these are the run's largest Python objects, so each image holds one shared folder object
and its relative path (no `Path` of its own), and the listing's file identities are one
structured array.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from retrainer.data.split import SPLITS
from retrainer.io.storage import AnyPath

# (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) of each listed file: the file index's
# identities (`retrainer.cache.file_index`), 40 bytes a file where tuples of Python ints took 260
IDENTITY = np.dtype([("device", "<u8"), ("inode", "<u8"), ("size", "<i8"), ("mtime_ns", "<i8"),
                     ("ctime_ns", "<i8")])


@functools.cache
def _only(label_index: int) -> tuple[int]:
    return (label_index,)


@dataclass(frozen=True, slots=True)  # a million of them: no __dict__ each
class ImageFile:
    """One image: where it is, its class (a manifest's image: its labels) and its split.

    `folder` is the image folder, one object shared by every image of a collection; `path`
    is made from it when asked for (a million `Path` objects held ~400 MB).
    """

    folder: AnyPath  # absolute (symlinks not resolved); or a URL
    relpath: str  # POSIX path relative to the image folder, e.g. "roses/img_1.jpg"
    label_index: int  # index into ImageCollection.labels (a multi-label image's first label)
    split: str  # "training" | "validation" | "testing"
    label_indices: tuple[int, ...] = ()  # every label of the image; () means (label_index,)

    def __post_init__(self) -> None:
        if not self.label_indices:  # one tuple per class, not per image (56 MB at a million)
            object.__setattr__(self, "label_indices", _only(self.label_index))

    @property
    def path(self) -> AnyPath:
        """The file: `folder` / `relpath`, through any symlinked class folder; or a URL."""
        return self.folder / self.relpath


@dataclass(frozen=True)
class ImageCollection:
    """Everything discovery found, in a deterministic order (label index, then relpath)."""

    image_dir: AnyPath  # absolute, or a URL
    labels: tuple[str, ...]  # index order = sorted class folder names
    images: tuple[ImageFile, ...]
    ignored: tuple[tuple[str, str], ...]  # (relpath, reason), sorted; folders end with "/"
    # IDENTITY [len(images)]: each image's identity as listed, so the file index need not stat
    # it again; empty (0 rows) for a remote folder or a manifest
    file_identities: np.ndarray = field(default_factory=lambda: np.zeros(0, IDENTITY),
                                        compare=False, repr=False)

    def counts(self) -> dict[str, dict[str, int]]:
        """{label: {split: number of images}}, every label and split present (zeros included);
        an image with several labels (--labels_csv) counts for each of them."""
        table = {label: dict.fromkeys(SPLITS, 0) for label in self.labels}
        for image in self.images:
            for index in image.label_indices:
                table[self.labels[index]][image.split] += 1
        return table

    def paths(self, images: Optional[Iterable[ImageFile]] = None) -> list[str | AnyPath]:
        """Every image's file (or those of `images`, this collection's), in order: plain strings
        in a local folder (no `Path` object per image: a million take seconds to make and
        hundreds of MB), else `ImageFile.path`."""
        chosen = self.images if images is None else images
        if isinstance(self.image_dir, Path):
            folder = os.fspath(self.image_dir)
            return [os.path.join(folder, image.relpath) for image in chosen]
        return [image.path for image in chosen]
