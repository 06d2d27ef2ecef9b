"""The split stage: retrain.py's hash split, on paths relative to --image_dir."""

from __future__ import annotations

import hashlib
import math
import shutil
import unicodedata

import pytest

from retrainer.data.discovery import discover_images
from retrainer.data.split import assign_split, hash_percentage
from retrainer.errors import EXIT_USAGE, UsageError
from tests.fixtures_data import make_color_image_dir


def reference_percentage(relpath: str) -> float:
    """retrain.py's formula, written out independently of retrainer.data.split."""
    kept = relpath.split("_nohash_")[0]
    number = int.from_bytes(hashlib.sha1(kept.encode("utf-8")).digest(), "big")
    return (number % 2**27) * (100.0 / (2**27 - 1))


def reference_split(relpath: str, validation: float, testing: float) -> str:
    percentage = reference_percentage(relpath)
    if percentage < validation:
        return "validation"
    return "testing" if percentage < validation + testing else "training"


# Percentages computed once with hashlib by hand (retrain.py's formula), pinned so that any change
# to the algorithm shows up here even if the reference above were changed along with it.
PINNED = [
    ("roses/img_1.jpg", 42.803846),
    ("daisy/100080576_f52e8ee070_n.jpg", 65.536754),
    ("img_1.jpg", 82.408282),  # a bare name hashes exactly as retrain.py hashed base names
    ("sunflowers/photo_nohash_3.jpg", 26.444782),
    ("T-shirt_top/train_00001.png", 38.127572),
    ("a/b/c.jpg", 1.056208),
    ("玫瑰/x.jpg", 78.336970),
    ("roses/c.jpg", 2.650412),
    ("roses/e.jpg", 17.937390),
    ("roses/h.jpg", 0.996273),
]
SETTINGS = [(10, 10), (0, 0), (5, 30), (25, 0), (0, 50), (100, 0), (0, 100), (40, 60), (33.3, 33.3)]
NAMES = [name for name, _ in PINNED] + [
    f"{folder}/{stem}{index}{extension}"
    for folder in ("roses", "Wild Tulips", "ankle boot")
    for stem, extension in (("img_", ".jpg"), ("IMG_", ".JPG"), ("photo_nohash_", ".png"))
    for index in range(12)
]


@pytest.mark.parametrize(("relpath", "percentage"), PINNED)
def test_pinned_percentages(relpath, percentage):
    assert hash_percentage(relpath) == pytest.approx(percentage, abs=1e-6)
    assert reference_percentage(relpath) == pytest.approx(percentage, abs=1e-6)


@pytest.mark.parametrize(
    ("relpath", "expected"),
    [
        ("roses/img_1.jpg", "training"),
        ("a/b/c.jpg", "validation"),
        ("roses/c.jpg", "validation"),
        ("roses/h.jpg", "validation"),
        ("roses/e.jpg", "testing"),
        ("玫瑰/x.jpg", "training"),
    ],
)
def test_pinned_splits_at_defaults(relpath, expected):
    assert assign_split(relpath, 10, 10) == expected


@pytest.mark.parametrize(("validation", "testing"), SETTINGS)
def test_split_table_matches_reference(validation, testing):
    for relpath in NAMES:
        assert assign_split(relpath, validation, testing) == reference_split(
            relpath, validation, testing
        ), relpath


def test_nohash_suffix_is_ignored():
    base = hash_percentage("roses/photo")
    for relpath in ("roses/photo_nohash_1.jpg", "roses/photo_nohash_2.jpg", "roses/photo_nohash_"):
        assert hash_percentage(relpath) == base
    assert hash_percentage("roses/photo.jpg") != base


def test_same_file_name_in_two_classes_splits_independently():
    pairs = [(f"roses/img_{index}.jpg", f"tulips/img_{index}.jpg") for index in range(50)]
    assert any(hash_percentage(a) != hash_percentage(b) for a, b in pairs)
    assert any(assign_split(a, 30, 30) != assign_split(b, 30, 30) for a, b in pairs)


def test_nfc_and_nfd_spellings_share_a_split():
    name = "Café/crème brûlée.jpg"
    nfd = unicodedata.normalize("NFD", name)
    assert nfd != name
    assert hash_percentage(nfd) == hash_percentage(name) == reference_percentage(name)


def test_extreme_percentages():
    names = NAMES[:20]
    assert {assign_split(name, 0, 0) for name in names} == {"training"}
    assert {assign_split(name, 100, 0) for name in names} == {"validation"}
    assert {assign_split(name, 0, 100) for name in names} == {"testing"}


def test_distribution_follows_percentages():
    names = [f"class_{index % 7}/image_{index:06d}.jpg" for index in range(20_000)]
    splits = [assign_split(name, 10, 20) for name in names]
    for split, share in (("validation", 0.10), ("testing", 0.20), ("training", 0.70)):
        assert splits.count(split) / len(names) == pytest.approx(share, abs=0.015), split


def test_moving_the_image_folder_keeps_every_split(tmp_path):
    first = make_color_image_dir(tmp_path / "a" / "dataset", per_class=30)
    before = {image.relpath: image.split for image in discover_images(first, 20, 20).images}
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    shutil.move(first, moved)
    after = {image.relpath: image.split for image in discover_images(moved, 20, 20).images}
    assert after == before
    assert set(before.values()) == {"training", "validation", "testing"}
    assert all(split == reference_split(relpath, 20, 20) for relpath, split in after.items())


@pytest.mark.parametrize(
    ("validation", "testing", "message"),
    [
        (-1, 10, "--validation_percentage must be a number from 0 to 100. Received: -1."),
        (10, 101, "--testing_percentage must be a number from 0 to 100. Received: 101."),
        (math.nan, 10, "--validation_percentage must be a number from 0 to 100. Received: nan."),
        ("10", 10, "--validation_percentage must be a number from 0 to 100. Received: '10'."),
        (60, 50, "must be at most 100 (the rest is training). Received: 60 + 50 = 110."),
    ],
)
def test_bad_percentages_are_usage_errors(validation, testing, message):
    with pytest.raises(UsageError) as caught:
        assign_split("roses/a.jpg", validation, testing)
    assert message in str(caught.value)
    assert caught.value.exit_code == EXIT_USAGE
