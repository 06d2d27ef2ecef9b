"""`--labels_csv`: the manifest reader's labels, splits, warnings and its errors with line numbers."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from retrainer.data.manifest import read_manifest
from retrainer.data.split import assign_split
from retrainer.errors import DataError, UsageError


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)


def _manifest(folder: Path, text: str) -> Path:
    path = folder / "labels.csv"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def images(tmp_path: Path) -> Path:
    for name in ("a.png", "b.png", "c.png", "sub/d.png"):
        _image(tmp_path / "images" / name)
    return tmp_path / "images"


def test_multi_label_rows_give_label_sets_and_the_folder_split(images: Path, tmp_path: Path):
    csv_file = _manifest(tmp_path, "path,labels\na.png,dog;beach\nb.png,beach\n"
                                   "sub/d.png, sunset ; dog \n")
    collection = read_manifest(csv_file, images, 10, 10, multi_label=True)
    assert collection.labels == ("beach", "dog", "sunset")
    found = {image.relpath: tuple(collection.labels[i] for i in image.label_indices)
             for image in collection.images}
    assert found == {"a.png": ("dog", "beach"), "b.png": ("beach",),
                     "sub/d.png": ("sunset", "dog")}
    for image in collection.images:
        assert image.split == assign_split(image.relpath, 10, 10)
        assert image.label_index == image.label_indices[0]
        assert image.path == images / image.relpath


def test_counts_and_balance_warnings_count_every_label(images: Path, tmp_path: Path):
    """The audit's imbalance warning reads `counts()`: 'beach' is on 3 images, not on the 1
    where it comes first."""
    from retrainer.audit.balance import balance_warnings

    csv_file = _manifest(tmp_path, "path,labels\na.png,dog;beach\nb.png,sunset;beach\n"
                                   "c.png,beach\nsub/d.png,dog\n")
    collection = read_manifest(csv_file, images, 0, 0, multi_label=True)
    assert {label: row["training"] for label, row in collection.counts().items()} == {
        "beach": 3, "dog": 2, "sunset": 1}
    assert balance_warnings(collection.counts(), 0, 0) == []  # 3 < 5 x 1: balanced enough


def test_single_label_manifest_and_merged_duplicate_rows(images: Path, tmp_path: Path):
    csv_file = _manifest(tmp_path, "\ufeffpath,labels,notes\na.png,cat,x\nb.png,dog,\n"
                                   "a.png,cat,again\n\n")
    collection = read_manifest(csv_file, images)
    assert collection.labels == ("cat", "dog")
    assert [(image.relpath, image.label_indices) for image in collection.images] == [
        ("a.png", (0,)), ("b.png", (1,))]


@pytest.mark.parametrize("text, line, words", [
    ("file,label\na.png,x\n", 1, "header must name"),
    ("path,labels\na.png,x\nb.png\n", 3, "expected 2 fields"),
    ("path,labels\na.png,x\nb.png,y,z\n", 3, "expected 2 fields"),
    ('path,labels\na.png,x\n"b.png,y\n', 3, "malformed CSV"),
    ("path,labels\n\na.png,x;;y\n", 3, "empty label"),
    ("path,labels\na.png,\n", 2, "empty label"),
    ("path,labels\n,x\n", 2, "empty path"),
    ("path,labels\na.png,x\n../outside.png,y\n", 3, "outside --image_dir"),
    ("path,labels\n/etc/passwd,y\n", 2, "outside --image_dir"),
    ("path,labels\nsub/../../x.png,y\n", 2, "outside --image_dir"),
    ("path,labels\na.png,x\nb.png,y;z\n", 3, "pass --multi_label"),
    ("path,labels\na.png,\"x\ny\"\n", 2, "control character"),
])
def test_bad_rows_name_the_line(images: Path, tmp_path: Path, text: str, line: int, words: str):
    csv_file = _manifest(tmp_path, text)
    with pytest.raises(UsageError, match=rf"labels\.csv line {line}: .*{words}") as caught:
        read_manifest(csv_file, images)
    assert caught.value.exit_code == 2
    assert "\n" not in str(caught.value)


def test_missing_files_are_warned_and_skipped_rare_labels_warned(images: Path, tmp_path: Path,
                                                                 caplog):
    csv_file = _manifest(tmp_path, "path,labels\na.png,x\nb.png,x\nc.png,y\ngone.png,y\n"
                                   "sub,y\n")
    with caplog.at_level(logging.WARNING):
        collection = read_manifest(csv_file, images)
    assert [image.relpath for image in collection.images] == ["a.png", "b.png", "c.png"]
    assert dict(collection.ignored) == {
        "gone.png": "does not exist (listed on line 5 of labels.csv)",
        "sub": "is a folder, not an image file (listed on line 6 of labels.csv)",
    }
    messages = [record.getMessage() for record in caplog.records]
    assert any("line 5" in message and "gone.png does not exist" in message for message in messages)
    assert any("Label 'y' is used by only 1 image" in message for message in messages)
    assert not any("Label 'x'" in message for message in messages)


def test_one_label_among_the_files_found_is_a_data_error(images: Path, tmp_path: Path):
    csv_file = _manifest(tmp_path, "path,labels\na.png,x\nb.png,x\ngone.png,y\n")
    with pytest.raises(DataError, match="at least 2 labels"):
        read_manifest(csv_file, images)


def test_missing_manifest_and_header_only(images: Path, tmp_path: Path):
    with pytest.raises(UsageError, match="does not exist"):
        read_manifest(tmp_path / "nope.csv", images)
    with pytest.raises(UsageError, match="no rows"):
        read_manifest(_manifest(tmp_path, "path,labels\n"), images)
    (tmp_path / "latin1.csv").write_bytes(b"path,labels\na.png,caf\xe9\n")
    with pytest.raises(UsageError, match="line 2: not UTF-8"):
        read_manifest(tmp_path / "latin1.csv", images)


_LABEL = st.text(st.characters(blacklist_categories=("C", "Z"), blacklist_characters=";"),
                 min_size=1, max_size=8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(_LABEL, min_size=1, max_size=3, unique=True), min_size=2,
                     max_size=6))
def test_any_labels_written_by_a_csv_writer_read_back(tmp_path_factory, rows):
    """Quoting, commas, quotes and non-ASCII in labels survive the CSV round trip."""
    folder = tmp_path_factory.mktemp("manifest")
    for index in range(len(rows)):
        _image(folder / "images" / f"{index},img.png")
    rows = [*rows, ["zz-extra-1", "zz-extra-2"]]  # at least two labels overall
    _image(folder / "images" / f"{len(rows) - 1},img.png")
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "labels"])
        for index, labels in enumerate(rows):
            writer.writerow([f"{index},img.png", ";".join(labels)])
    collection = read_manifest(folder / "labels.csv", folder / "images", multi_label=True)
    read = {image.relpath: [collection.labels[i] for i in image.label_indices]
            for image in collection.images}
    assert read == {f"{index},img.png": labels for index, labels in enumerate(rows)}
