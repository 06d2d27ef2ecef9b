"""The decodable images of a run and their bottleneck vectors, grouped by split.

The vectors are the run's largest data (5 GB at a million images), so they are not copied: the
rows of the stage's array are reordered in place, training then validation then testing, and
each split's features are a slice of it.
"""

from __future__ import annotations

import logging

import numpy as np

from retrainer.cache.bottlenecks import Bottlenecks
from retrainer.data.collection import ImageCollection, ImageFile
from retrainer.data.split import SPLITS, TRAINING
from retrainer.errors import DataError
from retrainer.training.head_types import FeatureSet
from retrainer.training.multi_label import targets_of

log = logging.getLogger(__name__)


class SplitFeatures:
    """The decodable images and their vectors, grouped by split."""

    def __init__(self, collection: ImageCollection, bottlenecks: Bottlenecks,
                 multi_label: bool = False) -> None:
        """Group `collection`'s decodable images by split.

        Takes over `bottlenecks.vectors`: its rows are reordered in place (module docstring),
        so the stage's array no longer follows `collection.images` afterwards. `multi_label`:
        each split's FeatureSet also carries float32 [n, C] 0/1 targets.
        """
        self.labels = collection.labels
        self.images: dict[str, list[ImageFile]] = {split: [] for split in SPLITS}
        rows: dict[str, list[int]] = {split: [] for split in SPLITS}
        for position, image in enumerate(collection.images):
            if bottlenecks.ok[position]:
                self.images[image.split].append(image)
                rows[image.split].append(position)
        self.unreadable = tuple(
            (collection.images[position].relpath, reason)
            for position, reason in bottlenecks.skipped
        )
        # each decodable image's content digest, by split: what its cached vector is keyed by
        self.digests = {split: [bottlenecks.digests[position] for position in rows[split]]
                        for split in SPLITS} if bottlenecks.digests else None
        order = [position for split in SPLITS for position in rows[split]]
        move_rows_in_place(bottlenecks.vectors, order)
        self.features = {}
        start = 0
        for split in SPLITS:
            end = start + len(rows[split])
            self.features[split] = FeatureSet(
                bottlenecks.vectors[start:end],  # float32 [n, D], a view; also when n == 0
                np.array([image.label_index for image in self.images[split]], np.int64),
                targets_of(self.images[split], len(self.labels)) if multi_label else None,
            )
            start = end
        if not self.images[TRAINING]:
            raise DataError(
                f"No decodable training images in {collection.image_dir} "
                f"({len(self.unreadable)} could not be read); add images or lower "
                "--validation_percentage/--testing_percentage."
            )
        trainable = [label for label, row in self.counts().items() if row[TRAINING]]
        if len(trainable) < 2:  # a one-class "classifier" would exit 0 and be useless
            raise DataError(
                f"Only 1 class has decodable training images ({trainable[0]!r}) in "
                f"{collection.image_dir} ({len(self.unreadable)} files could not be read); at "
                "least 2 are needed: add images or lower --validation_percentage/"
                "--testing_percentage."
            )
        for label, row in self.counts().items():
            if row[TRAINING] == 0:
                log.warning("Class %r has no usable training images; it cannot be predicted.",
                            label)

    def counts(self) -> dict[str, dict[str, int]]:
        table = {label: dict.fromkeys(SPLITS, 0) for label in self.labels}
        for split, images in self.images.items():
            for image in images:
                for index in image.label_indices:  # a multi-label image counts for each label
                    table[self.labels[index]][split] += 1
        return table


def move_rows_in_place(matrix: np.ndarray, order: list[int]) -> None:
    """Reorder `matrix`'s rows so that row i holds what row `order[i]` held, for i <
    len(order) (the rows `order` leaves out end up after them), with one row of extra memory:
    each cycle of the permutation is followed once."""
    target = np.asarray(order + sorted(set(range(len(matrix))) - set(order)), np.int64)
    done = np.zeros(len(matrix), bool)
    for start in np.flatnonzero(target != np.arange(len(matrix))).tolist():
        if done[start]:
            continue
        held = matrix[start].copy()
        current = start
        while True:
            done[current] = True
            source = int(target[current])
            if source == start:
                matrix[current] = held
                break
            matrix[current] = matrix[source]
            current = source
