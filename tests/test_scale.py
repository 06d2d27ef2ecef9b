"""What keeps a run within its budget at a million images and 1,000 classes: the vectors grouped by
split without a copy, the report bounded (images explained, the confusion matrix picture)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from retrainer.data.collection import ImageFile
from retrainer.data.split import TESTING
from retrainer.reports.explanations import choose_images
from retrainer.reports.sections import MAX_GALLERY_IMAGES


def collection(classes: int, per_class: int, wrong_every: int):
    images = [ImageFile(Path("/d"), f"c{c}/{i}.png", c, TESTING)
              for c in range(classes) for i in range(per_class)]
    truth = np.array([image.label_index for image in images])
    predictions = truth.copy()
    predictions[::wrong_every] = (truth[::wrong_every] + 1) % classes
    evaluation = SimpleNamespace(positions=np.arange(len(images)), predictions=predictions)
    return images, evaluation, [f"class {c}" for c in range(classes)]


def test_few_classes_get_per_class_correct_images_each_after_every_wrong_one():
    images, evaluation, labels = collection(4, 10, wrong_every=7)
    chosen = choose_images(images, evaluation, labels, per_class=3)
    wrong = [item for item in chosen if item.true_label != item.predicted_label]
    right = [item for item in chosen if item.true_label == item.predicted_label]
    assert len(wrong) == len(range(0, 40, 7)) and chosen[:len(wrong)] == wrong
    assert [item.true_label for item in right] == [label for label in labels for _ in range(3)]


def test_many_classes_are_capped_and_spread_over_the_classes():
    images, evaluation, labels = collection(1000, 5, wrong_every=3)
    chosen = choose_images(images, evaluation, labels, per_class=3)
    right = [item for item in chosen if item.true_label == item.predicted_label]
    wrong = [item for item in chosen if item.true_label != item.predicted_label]
    assert len(wrong) == MAX_GALLERY_IMAGES and len(right) == MAX_GALLERY_IMAGES
    assert len({item.true_label for item in right}) == MAX_GALLERY_IMAGES  # one per class first


def test_a_confusion_matrix_of_a_thousand_classes_stays_a_picture():
    """Capped at 2,500 x 2,400 pixels (uncapped: 55,000 pixels square)."""
    import io

    from PIL import Image

    from retrainer.reports.plots import confusion_matrix_png

    matrix = np.eye(1000, dtype=np.int64) * 7
    png = confusion_matrix_png(matrix, [f"class {c}" for c in range(1000)], "1,000 classes")
    assert Image.open(io.BytesIO(png)).size == (2500, 2400)


def test_rows_are_grouped_in_place_with_one_spare_row():
    """SplitFeatures groups the stage's vectors by split without a copy of them."""
    from retrainer.pipeline.split_features import move_rows_in_place

    rng = np.random.default_rng(0)
    for count in (0, 1, 2, 7, 1000):
        matrix = rng.random((count, 3)).astype(np.float32)
        before = matrix.copy()
        order = [int(row) for row in rng.permutation(count)[: count - count // 5]]
        move_rows_in_place(matrix, order)
        rest = sorted(set(range(count)) - set(order))
        np.testing.assert_array_equal(matrix, before[order + rest])
