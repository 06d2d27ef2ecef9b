"""Discovery from a manifest: `--labels_csv FILE` -> labelled, split list of image files.

The CSV has a header naming a `path` and a `labels` column (other columns are ignored). `path` is
relative to --image_dir; `labels` holds one or more label names separated by `;`. Rows that list
the same path twice are merged (their labels united), so "one row per image" and "one row per
(image, label) pair" both work. Splits use the folder rule's hash of `path`, so an image keeps its
split whether it is listed here or found in a class folder of the same name.

A bad row is a one-line error naming the file and line (exit 2), and so is a path that leaves
--image_dir; a missing file is a warning and a skip, as for folders (undecodable ones are skipped
later, by the bottleneck stage). Pure Python: no TensorFlow.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import posixpath
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, Optional

from retrainer.data.collection import ImageCollection, ImageFile
from retrainer.data.discovery import check_image_dir
from retrainer.data.split import assign_split, validate_percentages
from retrainer.errors import DataError, UsageError
from retrainer.io.storage import AnyPath, as_path

logger = logging.getLogger(__name__)

PATH_COLUMN = "path"
LABELS_COLUMN = "labels"
LABEL_SEPARATOR = ";"
MIN_IMAGES_PER_LABEL = 2


@dataclass
class _Entry:
    """One listed image while the manifest is read: its labels and the lines that named it."""

    labels: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)


def read_manifest(
    csv_file: str | os.PathLike[str],
    image_dir: str | os.PathLike[str],
    validation_percentage: float = 10,
    testing_percentage: float = 10,
    multi_label: bool = False,
    retrain_py_image_dir: Optional[str] = None,
) -> ImageCollection:
    """Read `--labels_csv` into the collection folder discovery would build.

    Args:
        csv_file: the manifest (UTF-8, with or without a byte-order mark).
        image_dir: the folder every `path` is relative to.
        validation_percentage, testing_percentage: shares of images, 0..100.
        multi_label: whether an image may have several labels (`--multi_label`).
        retrain_py_image_dir: --split_compat retrain_py: --image_dir as typed (the split hashes
            it with `path`, as for folders); None: hash `path`.

    Returns:
        ImageCollection: labels sorted; each ImageFile's `label_indices` holds all of its labels
        (`label_index` is the first). Missing files are in `ignored` with the line that named them.

    Raises:
        UsageError: the manifest is missing, unreadable or malformed (message: file, line, fix); a
            path leaves --image_dir; an empty label; several labels without --multi_label.
        DataError: fewer than two labels among the images found.
    """
    validate_percentages(validation_percentage, testing_percentage)
    root = check_image_dir(image_dir)
    manifest = as_path(csv_file)
    entries = _read_entries(manifest, _read_text(manifest))
    if not multi_label:
        for relpath, entry in entries.items():
            if len(entry.labels) > 1:
                raise UsageError(
                    f"{manifest} line {entry.lines[0]}: {relpath!r} has {len(entry.labels)} labels "
                    f"({LABEL_SEPARATOR.join(entry.labels)}); pass --multi_label to train a "
                    "model that predicts several labels per image, or keep one label per image."
                )
    ignored: list[tuple[str, str]] = []
    found: dict[str, _Entry] = {}
    for relpath, entry in entries.items():
        reason = _missing_reason(root / relpath)
        if reason is None:
            found[relpath] = entry
            continue
        logger.warning("%s line %d: %s %s; it is left out.", manifest, entry.lines[0],
                       root / relpath, reason)
        ignored.append((relpath, f"{reason} (listed on line {entry.lines[0]} of {manifest.name})"))
    labels = tuple(sorted({label for entry in found.values() for label in entry.labels}))
    if len(labels) < 2:
        raise DataError(
            f"{manifest} lists {len(found)} image(s) found under {str(root)!r} with "
            f"{len(labels)} label(s) ({', '.join(labels) or 'none'}); at least 2 labels are "
            f"needed. Check that the paths are relative to --image_dir."
        )
    index = {label: position for position, label in enumerate(labels)}
    images = tuple(
        ImageFile(root, relpath, index[entry.labels[0]],
                  assign_split(relpath, validation_percentage, testing_percentage,
                               retrain_py_image_dir),
                  label_indices=tuple(index[label] for label in entry.labels))
        for relpath, entry in sorted(found.items(), key=lambda item: item[0])
    )
    collection = ImageCollection(root, labels, images, tuple(sorted(ignored)))
    _warn_rare_labels(collection, manifest)
    logger.info("Found %d images with %d labels in %s; left out %d.", len(images), len(labels),
                manifest, len(ignored))
    return collection


def _read_text(manifest: AnyPath) -> str:
    try:
        data = manifest.read_bytes()
    except FileNotFoundError:
        raise UsageError(
            f"--labels_csv {manifest} does not exist; pass a CSV file with the header "
            f"'{PATH_COLUMN},{LABELS_COLUMN}' and one row per image."
        ) from None
    except IsADirectoryError:
        raise UsageError(f"--labels_csv {manifest} is a folder; pass the CSV file.") from None
    except OSError as error:
        raise UsageError(f"Cannot read --labels_csv {manifest}: {error.strerror}.") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise UsageError(f"{manifest} line {line}: not UTF-8 text; save the CSV as UTF-8.") from None


def _read_entries(manifest: AnyPath, text: str) -> dict[str, _Entry]:
    """{normalised relpath: its labels and lines}, in first-listed order."""
    rows = _rows(manifest, text)
    header_line, header = next(rows, (1, []))
    columns = [name.strip().lower() for name in header]
    if PATH_COLUMN not in columns or LABELS_COLUMN not in columns:
        raise UsageError(
            f"{manifest} line {header_line}: the header must name the columns "
            f"'{PATH_COLUMN}' and '{LABELS_COLUMN}' (e.g. '{PATH_COLUMN},{LABELS_COLUMN}'). "
            f"Received: {','.join(header)!r}."
        )
    path_at, labels_at = columns.index(PATH_COLUMN), columns.index(LABELS_COLUMN)
    entries: dict[str, _Entry] = {}
    for line, row in rows:
        if len(row) != len(header):
            raise UsageError(
                f"{manifest} line {line}: expected {len(header)} fields "
                f"({','.join(header)}), found {len(row)}; quote a path or label that contains "
                "a comma."
            )
        relpath = _relpath(manifest, line, row[path_at])
        entry = entries.setdefault(relpath, _Entry())
        entry.lines.append(line)
        for label in _labels(manifest, line, row[labels_at]):
            if label not in entry.labels:
                entry.labels.append(label)
    if not entries:
        raise UsageError(f"{manifest} has a header but no rows; list one image per row.")
    return entries


def _rows(manifest: AnyPath, text: str) -> Iterator[tuple[int, list[str]]]:
    """(line number where the row starts, fields) of every non-blank row."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    line = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise UsageError(f"{manifest} line {reader.line_num}: malformed CSV ({error}).") from None
        if any(field.strip() for field in row):
            yield line, row
        line = reader.line_num + 1


def _relpath(manifest: AnyPath, line: int, value: str) -> str:
    """The row's path, normalised (NFC, POSIX), refused when it leaves --image_dir."""
    raw = value.strip()
    if not raw:
        raise UsageError(f"{manifest} line {line}: empty path; every row names an image file.")
    relpath = posixpath.normpath(unicodedata.normalize("NFC", raw))
    if (posixpath.isabs(relpath) or relpath == ".." or relpath.startswith("../")
            or "\\" in relpath or ":" in relpath.split("/")[0] or relpath == "."):
        raise UsageError(
            f"{manifest} line {line}: path {raw!r} is outside --image_dir; paths must be "
            "relative to --image_dir and stay inside it (no leading '/', no '..', forward "
            "slashes only)."
        )
    return relpath


def _labels(manifest: AnyPath, line: int, value: str) -> list[str]:
    labels = [label.strip() for label in value.split(LABEL_SEPARATOR)]
    if any(not label for label in labels):
        raise UsageError(
            f"{manifest} line {line}: empty label in {value!r}; write one or more label names "
            f"separated by '{LABEL_SEPARATOR}' (e.g. 'beach{LABEL_SEPARATOR}dog')."
        )
    for label in labels:
        if any(unicodedata.category(char).startswith("C") for char in label):
            raise UsageError(f"{manifest} line {line}: label {label!r} contains a control "
                             "character (a tab or line break); labels are single lines.")
    return labels


def _missing_reason(path: AnyPath) -> str | None:
    """Why a listed file cannot be used (missing, a folder), or None when it is a file."""
    try:
        if path.is_file():
            return None
        return "is a folder, not an image file" if path.is_dir() else "does not exist"
    except OSError as error:
        return f"cannot be read ({error.strerror})"


def _warn_rare_labels(collection: ImageCollection, manifest: AnyPath) -> None:
    counts = Counter(index for image in collection.images for index in image.label_indices)
    for index, label in enumerate(collection.labels):
        if counts[index] < MIN_IMAGES_PER_LABEL:
            logger.warning(
                "Label %r is used by only %d image(s) in %s; fewer than %d cannot be both "
                "trained on and measured.", label, counts[index], manifest, MIN_IMAGES_PER_LABEL)
