"""The discovery stage: class folders -> labels, image files, splits, and what was ignored."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from PIL import Image

from retrainer.data.collection import ImageCollection
from retrainer.data.discovery import discover_images, normalize_label
from retrainer.data.split import SPLITS, assign_split
from retrainer.errors import EXIT_DATA, EXIT_USAGE, DataError, UsageError
from tests.fixtures_data import (
    encode,
    fashion_mnist_module,
    make_color_image_dir,
    make_messy_image_dir,
)

TINY_JPEG = encode(Image.new("RGB", (4, 4), (9, 9, 9)), "JPEG")


def write_images(root: Path, *relpaths: str) -> Path:
    for relpath in relpaths:
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(TINY_JPEG)
    return root


@pytest.mark.parametrize(
    ("folder", "label"),
    [
        ("roses", "roses"),
        ("T-shirt_top", "t shirt top"),  # retrain.py: runs of non [a-z0-9] -> one space
        ("Ankle_boot", "ankle boot"),
        ("Sun  Flowers!!", "sun flowers"),
        ("_private_", "private"),  # stripped at both ends
        ("Class 42", "class 42"),
        ("Café crème", "cafe creme"),  # accents fold to ASCII
        ("Wild Tulips Ü", "wild tulips u"),
        ("Роза", "роза"),  # letters outside ASCII are kept (lower-cased)
        ("玫瑰 2", "玫瑰 2"),
        ("🌹", "u1f339"),  # nothing alphanumeric: code points, never empty
        ("!!!", "u0021 u0021 u0021"),
        (" ", "u0020"),  # only spaces or separators (Python's isspace): still never empty
        ("\x1e", "u001e"),
    ],
)
def test_normalize_label(folder, label):
    assert normalize_label(folder) == label


def test_messy_tree_uses_images_and_explains_everything_else(tmp_path):
    collection = discover_images(make_messy_image_dir(tmp_path / "root"))

    assert collection.image_dir == tmp_path / "root"
    assert collection.labels == ("wild tulips u", "roses", "玫瑰")  # sorted folder names
    assert [image.relpath for image in collection.images] == [
        "Wild Tulips Ü/tulip 1.jpg",
        "Wild Tulips Ü/çà.png",
        "roses/B.JPG",
        "roses/a.jpg",
        "roses/c.Png",
        "roses/link_outside.jpg",
        "roses/png_named.jpg",
        "roses/sub/deep/d.jpeg",
        "玫瑰/w.tiff",
        "玫瑰/x.webp",
        "玫瑰/y.gif",
        "玫瑰/z.bmp",
    ]
    assert [image.label_index for image in collection.images] == [0] * 2 + [1] * 6 + [2] * 4
    for image in collection.images:
        assert image.path == tmp_path / "root" / image.relpath
        assert image.path.is_absolute() and image.path.is_file()
        assert image.split == assign_split(image.relpath, 10, 10)
    assert dict(collection.ignored) == {
        ".DS_Store": "hidden file",
        ".hidden_class/": "hidden folder",
        "__MACOSX/": "macOS archive metadata folder",
        "empty class/": "no images in this class folder",
        "empty class/readme.md": "not an image file (extension '.md')",
        "loose.jpg": "not inside a class folder",
        "roses/.DS_Store": "hidden file",
        "roses/._a.jpg": "macOS resource fork",
        "roses/.hidden.jpg": "hidden file",
        "roses/.thumbnails/": "hidden folder",
        "roses/a.jpg.xmp": "not an image file (extension '.xmp')",
        "roses/broken.jpg": "broken symbolic link",
        "roses/link_same.jpg": "same file as roses/a.jpg",
        "roses/notes.txt": "not an image file (extension '.txt')",
        "roses/song.mp3": "not an image file (extension '.mp3')",
        "roses/sub/loop/": "symbolic link to a folder (not followed inside a class folder)",
        "roses/up/": "symbolic link to a folder (not followed inside a class folder)",
        "self_link/": "symbolic link to a folder containing --image_dir",
        "truly empty/": "no images in this class folder",
    }
    assert list(collection.ignored) == sorted(collection.ignored)


def test_discovery_is_deterministic(tmp_path):
    root = make_messy_image_dir(tmp_path / "root")
    assert discover_images(root) == discover_images(root)


def test_every_extension_case_counts_once(tmp_path):
    # retrain.py globbed *.jpg and *.JPG, which matched twice on case-insensitive file systems.
    root = write_images(tmp_path, "a/x.jpg", "a/Y.JPG", "a/z.JpEg", "a/w.PNG", "b/v.jpg")
    collection = discover_images(root)
    assert [image.relpath for image in collection.images] == [
        "a/Y.JPG", "a/w.PNG", "a/x.jpg", "a/z.JpEg", "b/v.jpg"
    ]
    assert sum(sum(row.values()) for row in collection.counts().values()) == 5


def test_symlinked_class_folder_is_followed(tmp_path):
    elsewhere = write_images(tmp_path / "elsewhere", "tulips/t1.jpg", "tulips/t2.jpg")
    root = write_images(tmp_path / "root", "roses/r1.jpg")
    os.symlink(elsewhere / "tulips", root / "tulips")
    collection = discover_images(root)
    assert collection.labels == ("roses", "tulips")
    assert [image.path for image in collection.images] == [
        root / "roses/r1.jpg", root / "tulips/t1.jpg", root / "tulips/t2.jpg"
    ]


def test_symlink_to_an_ancestor_cannot_loop(tmp_path):
    root = write_images(tmp_path / "root", "roses/r.jpg", "tulips/t.jpg")
    os.symlink(tmp_path, root / "up")
    collection = discover_images(root)
    assert collection.labels == ("roses", "tulips")
    assert ("up/", "symbolic link to a folder containing --image_dir") in collection.ignored


def test_counts_and_splits_partition_the_images(fashion_mnist_dir):
    collection = discover_images(fashion_mnist_dir, 20, 20)
    names = fashion_mnist_module().CLASS_NAMES
    assert collection.labels == tuple(sorted(normalize_label(name) for name in names))
    assert len(collection.images) == 250
    counts = collection.counts()
    assert set(counts) == set(collection.labels)
    assert all(sum(row.values()) == 25 for row in counts.values())
    by_split = {split: [image for image in collection.images if image.split == split]
                for split in SPLITS}
    assert sum(len(images) for images in by_split.values()) == 250
    for split, images in by_split.items():
        assert images and all(image.split == split for image in images)
        assert len(images) == sum(row[split] for row in counts.values())
    assert len(by_split["training"]) / 250 == pytest.approx(0.6, abs=0.1)
    assert collection.ignored == ((".fashion_mnist.json", "hidden file"),)


def test_small_and_empty_classes_warn(tmp_path, caplog):
    root = make_color_image_dir(tmp_path / "root", per_class=3)
    (root / "nothing").mkdir()
    for path in sorted((root / "blue").iterdir())[1:]:
        path.unlink()
    with caplog.at_level(logging.WARNING, logger="retrainer.data.discovery"):
        collection = discover_images(root, 0, 0)
    assert collection.labels == ("blue", "green", "red")
    assert ("nothing/", "no images in this class folder") in collection.ignored
    assert "Class folder 'nothing' has no images; it is left out." in caplog.text
    assert "Class folder 'red' has only 3 images (fewer than 20 may give poor accuracy)." in (
        caplog.text
    )
    assert "Class folder 'blue' has only 1 image (fewer" in caplog.text


def test_class_without_training_images_warns(tmp_path, caplog):
    root = make_color_image_dir(tmp_path / "root", per_class=2)
    with caplog.at_level(logging.WARNING, logger="retrainer.data.discovery"):
        collection = discover_images(root, 100, 0)
    assert [image for image in collection.images if image.split == "training"] == []
    assert "Class folder 'red' has no training images (all 2 went to validation/testing)" in (
        caplog.text
    )


def test_clashing_labels_are_a_data_error_naming_both(tmp_path):
    root = write_images(tmp_path, "red-roses/a.jpg", "red_roses/b.jpg", "tulips/c.jpg")
    with pytest.raises(DataError) as caught:
        discover_images(root)
    assert str(caught.value) == (
        'Class folders "red-roses" and "red_roses" both give the label "red roses" '
        "(labels keep only lower-case letters and digits); rename one of them."
    )
    assert caught.value.exit_code == EXIT_DATA


@pytest.mark.parametrize("decomposed, marks", [("Cafe\u0301", "U+0301"),
                                               ("\u212bngstr\u00f6m", "U+212B U+00F6")])
def test_one_name_in_two_unicode_forms_says_so(tmp_path, decomposed, marks):
    """ "Café" typed (NFC) and "Café" as macOS writes it (NFD) look the same: the error shows
    which is which."""
    import unicodedata

    composed = unicodedata.normalize("NFC", decomposed)
    root = write_images(tmp_path, f"{composed}/a.jpg", f"{decomposed}/b.jpg", "tulips/c.jpg")
    with pytest.raises(DataError) as caught:
        discover_images(root)
    message = str(caught.value)
    assert f'"{decomposed}" (decomposed: {marks})' in message and f'"{composed}" ' in message
    assert message.endswith("(the same name, written with combining accents in one, as macOS "
                            "does); merge the two folders.")


def test_empty_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError) as caught:
        discover_images(tmp_path)
    message = str(caught.value)
    assert message.startswith(
        f"Found no sub-folders in '{tmp_path}'. At least 2 classes are needed"
    )
    assert "e.g. roses/*.jpg and tulips/*.jpg" in message
    assert caught.value.exit_code == EXIT_DATA


def test_loose_images_are_pointed_out(tmp_path):
    root = write_images(tmp_path, "a.jpg", "b.png", "roses/c.jpg")
    with pytest.raises(DataError) as caught:
        discover_images(root)
    assert str(caught.value).startswith(
        f"Found only 1 class folder with images (\"roses\", 1 image) in '{tmp_path}'; "
        "2 image(s) lie directly in it, outside any class folder. At least 2 classes are needed"
    )


def test_folders_without_images_are_a_data_error(tmp_path):
    (tmp_path / "roses").mkdir()
    (tmp_path / "tulips").mkdir()
    (tmp_path / "tulips" / "notes.txt").write_text("todo")
    with pytest.raises(DataError, match=r"Found 2 sub-folder\(s\) but no images in any of them"):
        discover_images(tmp_path)


def test_missing_image_dir_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError) as caught:
        discover_images(tmp_path / "flowers")
    assert str(caught.value) == (
        f"Image directory '{tmp_path / 'flowers'}' does not exist; pass --image_dir a folder "
        "with one sub-folder of images per class (e.g. flowers/roses/*.jpg)."
    )
    assert caught.value.exit_code == EXIT_USAGE


def test_file_as_image_dir_is_a_usage_error(tmp_path):
    path = write_images(tmp_path, "photo.jpg") / "photo.jpg"
    with pytest.raises(UsageError, match="is a file, not a folder") as caught:
        discover_images(path)
    assert caught.value.exit_code == EXIT_USAGE


def test_bad_percentages_are_checked_first(tmp_path):
    with pytest.raises(UsageError, match="--testing_percentage must be a number from 0 to 100"):
        discover_images(tmp_path / "does-not-exist", 10, -5)


def test_relative_image_dir_gives_absolute_paths(color_image_dir, monkeypatch):
    monkeypatch.chdir(color_image_dir.parent)
    collection = discover_images(color_image_dir.name)
    assert isinstance(collection, ImageCollection)
    assert collection.image_dir == color_image_dir
    assert all(image.path.is_absolute() for image in collection.images)


def test_paths_are_each_image_path_as_a_string(color_image_dir):
    """`ImageCollection.paths` (of every image, or of some of them, in their order): the images'
    `path`s, as plain strings in a local folder."""
    collection = discover_images(color_image_dir)
    some = collection.images[::-3]
    assert collection.paths() == [str(image.path) for image in collection.images]
    assert collection.paths(some) == [str(image.path) for image in some]
    assert all(type(path) is str for path in collection.paths(iter(some)))
