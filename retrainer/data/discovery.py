"""Discovery stage: an image folder -> labelled, split list of image files.

Each immediate sub-folder of --image_dir is a class; its images (found recursively) are split by
`retrainer.data.split`. Files are picked by extension (any case); whether they decode is decided later,
by `retrainer.data.decoding`. Everything skipped is listed in `ImageCollection.ignored` with a reason.
Pure Python: no TensorFlow, no output (warnings go to `logging`).
"""

from __future__ import annotations

import logging
import os
import re
import stat
import unicodedata
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from retrainer.data._remote_discovery import remote_classes
from retrainer.data.collection import IDENTITY, ImageCollection, ImageFile
from retrainer.data.names import (
    extension_reason,
    folder_name_reason,
    hidden_file_reason,
    image_extensions_text,
    is_image_name,
)
from retrainer.data.split import SPLITS, TRAINING, assign_split, validate_percentages
from retrainer.errors import DataError, UsageError
from retrainer.io.storage import AnyPath, RemotePath, as_path

logger = logging.getLogger(__name__)

MIN_IMAGES_PER_CLASS = 20  # retrain.py's threshold for "may cause issues"


class _Candidate(NamedTuple):
    class_index: int
    relpath: str
    file_id: tuple[int, int]  # (st_dev, st_ino) of the target: finds links to the same file
    is_symlink: bool
    identity: tuple[int, int, int, int, int]  # file_id, size, mtime_ns, ctime_ns


def normalize_label(folder_name: str) -> str:
    """A class folder name -> its label, as retrain.py made it for ASCII names.

    retrain.py: lower-case, every run of characters other than a-z0-9 becomes one space (here also
    stripped at both ends): "T-shirt_top" -> "t shirt top". Accents fold to ASCII ("Café" ->
    "cafe"). Names with letters or digits outside ASCII ("Роза", "玫瑰") keep them, lower-cased,
    so they stay distinct. A name with no letters or digits at all ("🌹") becomes its code points
    ("u1f339"; of every character if all are spaces or separators: " " -> "u0020"), so every
    label is non-empty.

    Args:
        folder_name: the class folder's name.

    Returns:
        str: the label written to the labels file.
    """
    folded = "".join(
        char for char in unicodedata.normalize("NFKD", folder_name)
        if not unicodedata.combining(char)
    )
    if any(not char.isascii() and char.isalnum() for char in folded):
        label = re.sub(r"[\W_]+", " ", unicodedata.normalize("NFC", folder_name).lower())
    else:
        label = re.sub(r"[^a-z0-9]+", " ", folded.lower())
    label = label.strip()
    visible = [char for char in folder_name if not char.isspace()] or folder_name  # " ", "\x1e"
    return label or " ".join(f"u{ord(char):04x}" for char in visible)


def discover_images(
    image_dir: str | os.PathLike[str],
    validation_percentage: float = 10,
    testing_percentage: float = 10,
    retrain_py_image_dir: Optional[str] = None,
) -> ImageCollection:
    """Find the classes and images under `image_dir` and assign each image its split.

    Classes: the immediate sub-folders, sorted by name; hidden ones, "__MACOSX" and folders
    without images are skipped. A symlinked class folder is followed (one hop) unless it contains
    `image_dir`. Images: files anywhere below a class folder with an image extension (any case),
    not hidden, not macOS "._" forks; symlinked files are followed, symlinked sub-folders are not
    (so links can never loop). A file reached twice (symlink or hard link) counts once.

    Args:
        image_dir: folder with one sub-folder per class.
        validation_percentage: share of images for validation, 0..100.
        testing_percentage: share of images for testing, 0..100.
        retrain_py_image_dir: --split_compat retrain_py: --image_dir as typed, whose spelling
            retrain.py's split hashed (`retrainer.data.split.retrain_py_name`); None: hash the
            path relative to `image_dir`.

    Returns:
        ImageCollection with at least two labels.

    Raises:
        UsageError: `image_dir` is missing or not a folder; bad percentages.
        DataError: fewer than two classes with images; two folders give the same label.
    """
    validate_percentages(validation_percentage, testing_percentage)
    root = check_image_dir(image_dir)
    ignored: list[tuple[str, str]] = []
    identities: dict[str, tuple[int, int, int, int, int]] = {}  # by relpath, while listing
    if isinstance(root, RemotePath):
        folders, per_class = remote_classes(root, ignored)
    else:
        folders, per_class = _local_classes(root, ignored, identities)

    kept_folders: list[str] = []
    kept_relpaths: list[list[str]] = []
    for name, relpaths in zip(folders, per_class):
        if not relpaths:
            logger.warning("Class folder %r has no images; it is left out.", name)
            ignored.append((f"{name}/", "no images in this class folder"))
            continue
        if len(relpaths) < MIN_IMAGES_PER_CLASS:
            logger.warning(
                "Class folder %r has only %d image%s (fewer than %d may give poor accuracy).",
                name, len(relpaths), "" if len(relpaths) == 1 else "s", MIN_IMAGES_PER_CLASS,
            )
        kept_folders.append(name)
        kept_relpaths.append(sorted(relpaths))

    _require_two_classes(root, folders, kept_folders, kept_relpaths, ignored)
    labels = _unique_labels(kept_folders)
    images = tuple(
        ImageFile(root, relpath, index,
                  assign_split(relpath, validation_percentage, testing_percentage,
                               retrain_py_image_dir))
        for index, relpaths in enumerate(kept_relpaths)
        for relpath in relpaths
    )
    collection = ImageCollection(root, labels, images, tuple(sorted(ignored)),
                                 _identities_of(images, identities))
    _log_summary(collection, kept_folders)
    return collection


def _identities_of(images: tuple[ImageFile, ...],
                   identities: dict[str, tuple[int, int, int, int, int]]) -> np.ndarray:
    """IDENTITY [len(images)] from the listing's identities by relpath (0 rows if it has none:
    a remote folder)."""
    if not identities:
        return np.zeros(0, IDENTITY)
    return np.array([identities[image.relpath] for image in images], IDENTITY)


def _local_classes(
    root: Path, ignored: list[tuple[str, str]], identities: dict[str, tuple[int, int, int, int, int]]
) -> tuple[list[str], list[list[str]]]:
    """Class folder names and, per class, the relpaths of its images (links counted once);
    each candidate's identity goes into `identities`."""
    folders = _class_folders(root, ignored)
    candidates = [
        candidate
        for index, name in enumerate(folders)
        for candidate in _class_candidates(root, name, index, ignored)
    ]
    identities.update((candidate.relpath, candidate.identity) for candidate in candidates)
    return folders, _deduplicate(candidates, len(folders), ignored)


def check_image_dir(image_dir: str | os.PathLike[str]) -> AnyPath:
    """--image_dir as an absolute path (or URL) that exists and is a folder.

    Raises:
        UsageError: it is missing or a file.
    """
    root = as_path(image_dir)
    if isinstance(root, Path):
        root = Path(os.path.abspath(root))
    if not root.exists():
        raise UsageError(
            f"Image directory {os.fspath(image_dir)!r} does not exist; pass --image_dir a folder "
            "with one sub-folder of images per class (e.g. flowers/roses/*.jpg)."
        )
    if not root.is_dir():
        raise UsageError(
            f"--image_dir {os.fspath(image_dir)!r} is a file, not a folder; pass the folder that "
            "holds one sub-folder of images per class."
        )
    return root


def _class_folders(root: Path, ignored: list[tuple[str, str]]) -> list[str]:
    """Sorted names of the class folders; everything else at the top level goes to `ignored`."""
    try:
        entries = sorted(os.scandir(root), key=lambda entry: entry.name)
    except OSError as error:
        raise UsageError(f"Cannot list --image_dir {str(root)!r}: {error.strerror}.") from error
    folders = []
    for entry in entries:
        name = entry.name
        if _is_folder(entry):
            reason = folder_name_reason(name)
            if reason:
                ignored.append((f"{name}/", reason))
            elif entry.is_symlink() and _is_within(root, Path(os.path.realpath(entry.path))):
                ignored.append((f"{name}/", "symbolic link to a folder containing --image_dir"))
            else:
                folders.append(name)
        else:
            ignored.append((name, _file_reason(entry) or "not inside a class folder"))
    return folders


def _class_candidates(
    root: Path, class_name: str, class_index: int, ignored: list[tuple[str, str]]
) -> list[_Candidate]:
    """The image files below one class folder (recursively, symlinked sub-folders not followed)."""
    found = []
    pending = [class_name]
    while pending:
        folder = pending.pop()
        try:
            entries = sorted(os.scandir(root / folder), key=lambda entry: entry.name)
        except OSError as error:
            ignored.append((f"{folder}/", f"cannot list folder ({error.strerror})"))
            continue
        for entry in entries:
            relpath = f"{folder}/{entry.name}"
            if _is_folder(entry):
                reason = _subfolder_reason(entry)
                if reason:
                    ignored.append((f"{relpath}/", reason))
                else:
                    pending.append(relpath)
                continue
            reason = _file_reason(entry)
            if reason:
                ignored.append((relpath, reason))
                continue
            info = entry.stat()
            found.append(_Candidate(class_index, relpath, (info.st_dev, info.st_ino),
                                    entry.is_symlink(), (info.st_dev, info.st_ino, info.st_size,
                                                         info.st_mtime_ns, info.st_ctime_ns)))
    return found


def _is_folder(entry: os.DirEntry[str]) -> bool:
    """`entry.is_dir()`, but False for a symlink that cannot be followed (it raises on a loop)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _subfolder_reason(entry: os.DirEntry[str]) -> str | None:
    reason = folder_name_reason(entry.name)
    if reason is None and entry.is_symlink():
        return "symbolic link to a folder (not followed inside a class folder)"
    return reason


def _file_reason(entry: os.DirEntry[str]) -> str | None:
    """Why a non-folder entry is not an image to use, or None if it is one."""
    reason = hidden_file_reason(entry.name)
    if reason:
        return reason
    try:
        mode = entry.stat().st_mode  # cached on the entry; follows symlinks
    except OSError:
        return "broken symbolic link" if entry.is_symlink() else "cannot read file"
    reason = extension_reason(entry.name)
    if reason:
        return reason
    if not stat.S_ISREG(mode):
        return "not a regular file"
    return None


def _deduplicate(
    candidates: list[_Candidate], class_count: int, ignored: list[tuple[str, str]]
) -> list[list[str]]:
    """Per class, the relpaths to use: a file reached twice counts once (a real file over a link).

    Links to one image from several places would put the same pixels in several splits.
    """
    owner: dict[tuple[int, int], str] = {}
    for candidate in sorted(candidates, key=lambda c: (c.is_symlink, c.class_index, c.relpath)):
        owner.setdefault(candidate.file_id, candidate.relpath)
    per_class: list[list[str]] = [[] for _ in range(class_count)]
    for candidate in candidates:
        first = owner[candidate.file_id]
        if first == candidate.relpath:
            per_class[candidate.class_index].append(candidate.relpath)
        else:
            ignored.append((candidate.relpath, f"same file as {first}"))
    return per_class


def _is_within(path: Path, folder: Path) -> bool:
    """True if `path` is `folder` or below it, symlinks resolved (`folder` already is)."""
    resolved = Path(os.path.realpath(path))
    return resolved == folder or folder in resolved.parents


def _require_two_classes(
    root: AnyPath,
    folders: list[str],
    kept_folders: list[str],
    kept_relpaths: list[list[str]],
    ignored: list[tuple[str, str]],
) -> None:
    if len(kept_folders) >= 2:
        return
    if kept_folders:
        count = len(kept_relpaths[0])
        found = (f'only 1 class folder with images ("{kept_folders[0]}", {count} '
                 f'image{"" if count == 1 else "s"})')
    elif folders:
        found = f"{len(folders)} sub-folder(s) but no images in any of them"
    else:
        found = "no sub-folders"
    loose = sum(1 for relpath, _ in ignored if "/" not in relpath and is_image_name(relpath))
    hint = f"; {loose} image(s) lie directly in it, outside any class folder" if loose else ""
    extensions = image_extensions_text()
    raise DataError(
        f"Found {found} in {str(root)!r}{hint}. At least 2 classes are needed: put each class's "
        f"images ({extensions}) in its own sub-folder, e.g. roses/*.jpg and tulips/*.jpg."
    )


def _unique_labels(folders: list[str]) -> tuple[str, ...]:
    by_label: dict[str, str] = {}
    for name in folders:
        label = normalize_label(name)
        if label in by_label:
            first = by_label[label]
            same = unicodedata.normalize("NFC", first) == unicodedata.normalize("NFC", name)
            why = ("(the same name, written with combining accents in one, as macOS does); merge "
                   "the two folders" if same else
                   "(labels keep only lower-case letters and digits); rename one of them")
            raise DataError(
                f'Class folders {_quoted(first)} and {_quoted(name)} both give the label '
                f'"{label}" {why}.'
            )
        by_label[label] = name
    return tuple(by_label)


def _quoted(name: str) -> str:
    """A folder name in double quotes; one with combining accents (not NFC) also gets their code
    points, so two names that look the same read differently."""
    if unicodedata.is_normalized("NFC", name):
        return f'"{name}"'
    marks = [char for char in name if unicodedata.combining(char)] or [
        char for char in name if not char.isascii()]  # e.g. U+212B ANGSTROM SIGN, NFC: U+00C5
    return f'"{name}" (decomposed: {" ".join(f"U+{ord(char):04X}" for char in marks)})'


def _log_summary(collection: ImageCollection, folders: list[str]) -> None:
    counts = collection.counts()
    for name, label in zip(folders, collection.labels):
        if counts[label][TRAINING] == 0:
            logger.warning(
                "Class folder %r has no training images (all %d went to validation/testing); "
                "add images or lower --validation_percentage/--testing_percentage.",
                name, sum(counts[label].values()),
            )
    for relpath, reason in collection.ignored:
        logger.debug("Ignored %s: %s", relpath, reason)
    totals = {split: sum(row[split] for row in counts.values()) for split in SPLITS}
    logger.info(
        "Found %d images in %d classes (training %d, validation %d, testing %d); ignored %d.",
        len(collection.images), len(collection.labels),
        totals["training"], totals["validation"], totals["testing"], len(collection.ignored),
    )
