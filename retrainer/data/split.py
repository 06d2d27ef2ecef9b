"""Split stage: assign each image to training, validation or testing by a hash of its name.

retrain.py's algorithm, so a file's split never changes as the dataset grows: SHA-1 of the name
with everything from `_nohash_` on removed, mapped to a percentage. The name hashed is the POSIX
path relative to --image_dir ("roses/img_1.jpg"), so moving or renaming the image folder never
reshuffles. retrain.py hashed the path as it globbed it, --image_dir as typed included
("flower_photos/roses/img_1.jpg"); `--split_compat retrain_py` hashes that name instead
(`retrain_py_name`), for users who must keep retrain.py's test set. Pure Python; no TensorFlow.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import unicodedata
from typing import Optional

from retrainer.errors import UsageError

TRAINING = "training"
VALIDATION = "validation"
TESTING = "testing"
SPLITS = (TRAINING, VALIDATION, TESTING)
# --split_compat: which name is hashed (docs/migrating.md)
SPLIT_COMPAT_NONE = "none"  # the path relative to --image_dir: stable wherever the folder lives
SPLIT_COMPAT_RETRAIN_PY = "retrain_py"  # retrain.py's: --image_dir as typed + the relative path
SPLIT_COMPATS = (SPLIT_COMPAT_NONE, SPLIT_COMPAT_RETRAIN_PY)

# retrain.py: ~134M, the most images per class the hash can spread evenly.
MAX_NUM_IMAGES_PER_CLASS = 2**27 - 1

_NOHASH = re.compile(r"_nohash_.*$")


def validate_percentages(validation_percentage: float, testing_percentage: float) -> None:
    """Check the two split percentages the way --validation/--testing_percentage need them.

    Raises:
        UsageError: either is not a number in 0..100, or together they exceed 100.
    """
    for flag, value in (
        ("--validation_percentage", validation_percentage),
        ("--testing_percentage", testing_percentage),
    ):
        if not isinstance(value, (int, float)) or math.isnan(value) or not 0 <= value <= 100:
            raise UsageError(f"{flag} must be a number from 0 to 100. Received: {value!r}.")
    if validation_percentage + testing_percentage > 100:
        raise UsageError(
            "--validation_percentage plus --testing_percentage must be at most 100 (the rest is "
            f"training). Received: {validation_percentage} + {testing_percentage} = "
            f"{validation_percentage + testing_percentage}."
        )


def retrain_py_name(image_dir_as_typed: str, relpath: str) -> str:
    """The name retrain.py hashed for an image: its glob pattern's prefix, --image_dir exactly as
    typed ("./photos", "/data/photos/", "gs://b/photos"), joined with the class folder and file.

    Args:
        image_dir_as_typed: the --image_dir string, unnormalised.
        relpath: POSIX path relative to it, e.g. "roses/img_1.jpg".
    """
    return os.path.join(image_dir_as_typed, relpath)


def hash_percentage(relpath: str, normalize: bool = True) -> float:
    """retrain.py's stable pseudo-random percentage (0..100) for an image path.

    Args:
        relpath: POSIX path relative to the image folder, e.g. "roses/img_1.jpg" (or, for
            --split_compat retrain_py, `retrain_py_name`'s path).
        normalize: NFC-normalise the name first, so macOS (NFD) and Linux (NFC) spellings of the
            same non-ASCII name land in the same split (retrain.py hashed the bytes as listed).

    Returns:
        float in [0, 100]: everything after `_nohash_` is ignored, so "a_nohash_1.jpg" and
        "a_nohash_2.jpg" (e.g. photos of one object) always share a split.
    """
    name = unicodedata.normalize("NFC", relpath) if normalize else relpath
    hash_name = _NOHASH.sub("", name)
    hash_name_hashed = hashlib.sha1(os.fsencode(hash_name)).hexdigest()
    return (int(hash_name_hashed, 16) % (MAX_NUM_IMAGES_PER_CLASS + 1)) * (
        100.0 / MAX_NUM_IMAGES_PER_CLASS
    )


def assign_split(relpath: str, validation_percentage: float, testing_percentage: float,
                 retrain_py_image_dir: Optional[str] = None) -> str:
    """The split an image belongs to: "training", "validation" or "testing".

    Args:
        relpath: POSIX path relative to --image_dir, e.g. "roses/img_1.jpg".
        validation_percentage: share of images for validation, 0..100.
        testing_percentage: share of images for testing, 0..100; the two sum to at most 100.
        retrain_py_image_dir: for --split_compat retrain_py, --image_dir as typed: the name
            hashed is then retrain.py's (`retrain_py_name`), not `relpath`.

    Returns:
        "validation" if the hash percentage is below validation_percentage, else "testing" if it
        is below validation + testing, else "training".

    Raises:
        UsageError: the percentages are out of range.
    """
    validate_percentages(validation_percentage, testing_percentage)
    if retrain_py_image_dir is None:
        percentage_hash = hash_percentage(relpath)
    else:
        percentage_hash = hash_percentage(retrain_py_name(retrain_py_image_dir, relpath),
                                          normalize=False)
    if percentage_hash < validation_percentage:
        return VALIDATION
    if percentage_hash < validation_percentage + testing_percentage:
        return TESTING
    return TRAINING


def fold_of(relpath: str, folds: int) -> int:
    """A stable fold (0..folds-1) for cross-validation among the non-test images, independent of
    the split's hash; names that share a split through `_nohash_` share a fold too (copies or
    photos of one object are never on both sides of a fold)."""
    key = "fold:" + _NOHASH.sub("", unicodedata.normalize("NFC", relpath))
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16) % folds
