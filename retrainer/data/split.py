"""Split stage: assign each image to training, validation or testing by a hash of its name.

retrain.py's algorithm, kept bit-for-bit so a file's split never changes as the dataset grows:
SHA-1 of the name with everything from `_nohash_` on removed, mapped to a percentage. Unlike
retrain.py (which hashed only the base name), the name hashed is the POSIX path relative to
--image_dir ("roses/img_1.jpg"): moving or renaming the parent folder never reshuffles, and two
classes' "img_1.jpg" get independent splits. Pure Python; no TensorFlow.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata

from retrainer.errors import UsageError

TRAINING = "training"
VALIDATION = "validation"
TESTING = "testing"
SPLITS = (TRAINING, VALIDATION, TESTING)

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


def hash_percentage(relpath: str) -> float:
    """retrain.py's stable pseudo-random percentage (0..100) for an image path.

    Args:
        relpath: POSIX path relative to the image folder, e.g. "roses/img_1.jpg". It is
            NFC-normalised first, so macOS (NFD) and Linux (NFC) spellings of the same
            non-ASCII name land in the same split; ASCII names hash exactly as retrain.py's.

    Returns:
        float in [0, 100]: everything after `_nohash_` is ignored, so "a_nohash_1.jpg" and
        "a_nohash_2.jpg" (e.g. photos of one object) always share a split.
    """
    hash_name = _NOHASH.sub("", unicodedata.normalize("NFC", relpath))
    hash_name_hashed = hashlib.sha1(hash_name.encode("utf-8")).hexdigest()
    return (int(hash_name_hashed, 16) % (MAX_NUM_IMAGES_PER_CLASS + 1)) * (
        100.0 / MAX_NUM_IMAGES_PER_CLASS
    )


def assign_split(relpath: str, validation_percentage: float, testing_percentage: float) -> str:
    """The split an image belongs to: "training", "validation" or "testing".

    Args:
        relpath: POSIX path relative to --image_dir, e.g. "roses/img_1.jpg".
        validation_percentage: share of images for validation, 0..100.
        testing_percentage: share of images for testing, 0..100; the two sum to at most 100.

    Returns:
        "validation" if the hash percentage is below validation_percentage, else "testing" if it
        is below validation + testing, else "training".

    Raises:
        UsageError: the percentages are out of range.
    """
    validate_percentages(validation_percentage, testing_percentage)
    percentage_hash = hash_percentage(relpath)
    if percentage_hash < validation_percentage:
        return VALIDATION
    if percentage_hash < validation_percentage + testing_percentage:
        return TESTING
    return TRAINING
