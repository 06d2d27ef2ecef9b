"""Novelty stage: how unlike every training image an image is, and where "unknown" begins.

The score is the cosine distance from an image's bottleneck vector to its K-th nearest training
vector (K = 5, or the smallest class's number of reference vectors when that is lower; k-NN in
the extractor's space, chosen by measurement over class-prototype, Mahalanobis and
softmax-based scores: docs/multi_label.md#unknown). It needs no labels, so single- and multi-label
heads share it. At most MAX_REFERENCES training vectors are kept (a seeded, per-class proportional
sample), so the score fits into every export as one matrix product and a top-k.

The threshold is calibrated on the validation split: the smallest score that at least `pass_rate`
of the validation images do not exceed. Without validation images the training vectors are scored
leave-one-out instead, with a warning. The test split is never read here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import zipfile
from typing import Any, Optional

import numpy as np

from retrainer.cache.layout import novelty_path
from retrainer.cache.memo import Memo, memo_key
from retrainer.data.split import TRAINING, VALIDATION

log = logging.getLogger(__name__)

K = 5
MAX_REFERENCES = 4096
DEFAULT_PASS_RATE = 0.95
MIN_CALIBRATION_IMAGES = 20  # fewer validation images: the threshold is a rough guess (warned)
_CHUNK = 1024  # query rows per matrix product (bounds memory at CHUNK x MAX_REFERENCES floats)


@dataclasses.dataclass(frozen=True)
class Novelty:
    """The fitted novelty score and its threshold.

    Attributes:
        references: float32 [M, D] unit-length training vectors, M <= MAX_REFERENCES.
        k: the neighbour whose distance is the score (1 = nearest): K, or fewer when the
            smallest group has fewer reference vectors.
        threshold: images scoring above it are "unknown".
        pass_rate: the share of calibration images at or below the threshold asked for.
        calibrated_on: "validation" or "training" (leave-one-out, when there is no validation).
        calibration_count: images the threshold was calibrated on.
    """

    references: np.ndarray
    k: int
    threshold: float
    pass_rate: float
    calibrated_on: str
    calibration_count: int

    def scores(self, features: np.ndarray) -> np.ndarray:
        """float32 [N, D] bottleneck vectors -> float32 [N] novelty scores in [0, 2]."""
        return _kth_distance(features, self.references, self.k)

    def to_json(self) -> dict[str, Any]:
        """What exports and metrics carry (no vectors)."""
        return {"method": "knn_cosine", "k": self.k, "references": len(self.references),
                "threshold": self.threshold, "pass_rate": self.pass_rate,
                "calibrated_on": self.calibrated_on, "calibration_count": self.calibration_count}


def fit_novelty(train_features: np.ndarray, train_groups: np.ndarray,
                validation_features: np.ndarray, pass_rate: float = DEFAULT_PASS_RATE,
                seed: int = 0) -> Novelty:
    """Keep the reference vectors and calibrate the threshold.

    Args:
        train_features: float32 [N, D] training vectors (N >= 1).
        train_groups: int [N] each row's class, or a multi-label split's float32 [N, C] 0/1
            targets: the reference sample keeps each class's share (a multi-label row counts
            for its rarest label), and k is at most the smallest class's (label's) count.
        validation_features: float32 [V, D]; may be empty.
        pass_rate: share of in-distribution images that must pass, in (0, 1].
        seed: picks the reference sample.

    Returns:
        Novelty.
    """
    groups = np.asarray(train_groups)
    chosen = _proportional_sample(rarest_labels(groups) if groups.ndim == 2 else groups,
                                  MAX_REFERENCES, seed)
    references = _unit(train_features[chosen])
    # An image of the smallest class (label) must be able to find its k-th neighbour in it:
    # with 3 images of a class and k = 5, its own images would score like strangers.
    per_group = (groups[chosen].sum(axis=0) if groups.ndim == 2
                 else np.unique(groups[chosen], return_counts=True)[1])
    k = max(1, min(K, int(per_group[per_group > 0].min())))
    if len(validation_features):
        calibration = _kth_distance(validation_features, references, k)
        calibrated_on = "validation"
    else:
        log.warning("No validation images: the novelty threshold is calibrated on the training "
                    "images (leave-one-out), so it rejects more new in-distribution images than "
                    "--novelty_pass_rate says.")
        calibration = _kth_distance(train_features[chosen], references, k + 1) if len(
            references) > k else np.zeros(len(references), np.float32)
        calibrated_on = "training"
    if len(calibration) < MIN_CALIBRATION_IMAGES:
        log.warning("The novelty threshold is calibrated on %d image(s) only; its pass rate on "
                    "new images is a rough guess.", len(calibration))
    threshold = calibrate_threshold(calibration, pass_rate)
    log.info("Novelty: %d-NN cosine distance to %d training vectors; threshold %.4f passes "
             "%.1f%% of %d %s images.", k, len(references), threshold, pass_rate * 100,
             len(calibration), calibrated_on)
    return Novelty(references, k, threshold, pass_rate, calibrated_on, len(calibration))


def calibrate_threshold(scores: np.ndarray, pass_rate: float) -> float:
    """The smallest observed score that at least `pass_rate` of `scores` do not exceed.

    Args:
        scores: float [N] in-distribution scores, N >= 1 (N == 0 gives +inf: nothing rejected).
        pass_rate: in (0, 1].
    """
    if len(scores) == 0:
        return math.inf
    ordered = np.sort(np.asarray(scores, np.float64))
    return float(ordered[max(math.ceil(pass_rate * len(ordered)), 1) - 1])


def is_unknown(novelty: np.ndarray | float, threshold: Optional[float]) -> np.ndarray | bool:
    """Scores above the threshold are unknown (None threshold: nothing is)."""
    if threshold is None:
        return np.zeros_like(novelty, bool) if isinstance(novelty, np.ndarray) else False
    return novelty > threshold


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def _kth_distance(features: np.ndarray, references: np.ndarray, k: int) -> np.ndarray:
    """float32 [N]: 1 - the k-th largest cosine similarity of each row to the references
    (rows normalised _CHUNK at a time: no whole copy of `features`)."""
    scores = np.empty(len(features), np.float32)
    for start in range(0, len(features), _CHUNK):
        similarity = _unit(np.asarray(features[start:start + _CHUNK], np.float32)) @ references.T
        kth = -np.partition(-similarity, k - 1, axis=1)[:, k - 1]
        scores[start:start + _CHUNK] = 1.0 - kth
    return scores


def _proportional_sample(groups: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted row indices: all rows when there are at most `size`, else a seeded sample keeping
    each group's share (at least one row of every group)."""
    if len(groups) <= size:
        return np.arange(len(groups))
    rng = np.random.default_rng(seed)
    chosen = []
    values, counts = np.unique(groups, return_counts=True)
    for value, count in zip(values, counts):
        rows = np.flatnonzero(groups == value)
        take = max(1, round(size * count / len(groups)))
        chosen.append(rng.choice(rows, min(take, count), replace=False))
    return np.sort(np.concatenate(chosen))


def _novelty_bytes(novelty: Novelty) -> bytes:
    """`novelty` as an .npz (no pickle)."""
    buffer = io.BytesIO()
    np.savez(buffer, references=novelty.references,
             fields=np.frombuffer(json.dumps({
                 "k": novelty.k, "threshold": novelty.threshold, "pass_rate": novelty.pass_rate,
                 "calibrated_on": novelty.calibrated_on,
                 "calibration_count": novelty.calibration_count}).encode(), np.uint8))
    return buffer.getvalue()


def _novelty_from(data: bytes) -> Novelty:
    with np.load(io.BytesIO(data), allow_pickle=False) as stored:
        fields = json.loads(stored["fields"].tobytes())
        return Novelty(stored["references"].astype(np.float32), int(fields["k"]),
                       float(fields["threshold"]), float(fields["pass_rate"]),
                       str(fields["calibrated_on"]), int(fields["calibration_count"]))


def _readable(data: bytes) -> bool:
    try:
        _novelty_from(data)
    except (ValueError, KeyError, TypeError, OSError, zipfile.BadZipFile):
        return False
    return True


def novelty_summary(novelty: Novelty, test: Any) -> dict[str, Any]:
    """`Novelty.to_json()` plus the share of the test split's images that pass ("test_pass_rate",
    None without test images) and how many were measured ("test_count").

    Args:
        novelty: the fitted score.
        test: the test split's FeatureSet (vectors of the extractor the exports use).
    """
    passed = novelty.scores(test.features) <= novelty.threshold if len(test) else None
    return {**novelty.to_json(),
            "test_pass_rate": None if passed is None else float(passed.mean()),
            "test_count": len(test)}


def rarest_labels(targets: np.ndarray) -> np.ndarray:
    """int64 [N]: each multi-label row's rarest label (float32 [N, C] 0/1 targets): the group
    it counts for in the reference sample, so rare labels keep their share."""
    counts = targets.sum(axis=0)
    return np.argmin(np.where(targets > 0.5, counts, np.inf), axis=1).astype(np.int64)


def fit_run_novelty(splits: Any, extractor: Any, fine_tuning: Optional[Any], pass_rate: float,
                    seed: int, kept: Optional[tuple[os.PathLike[str] | str, str]] = None
                    ) -> Novelty:
    """`fit_novelty` on a run's splits (`pipeline.split_features.SplitFeatures`).

    After --do_fine_tuning the cached vectors are stale, so the reference sample and the
    validation images are run through the tuned extractor again. Otherwise, with `kept` =
    (a local cache root, the id of the vectors' cache namespace), the fit is kept there, keyed
    by the splits' image digests, labels and the settings: a rerun reads it back.
    """
    train, validation = splits.features[TRAINING], splits.features[VALIDATION]
    groups = train.labels if train.targets is None else train.targets
    if fine_tuning is None:
        def fit() -> Novelty:
            return fit_novelty(train.features, groups, validation.features, pass_rate, seed)

        if kept is None or splits.digests is None:
            return fit()
        digest = hashlib.sha256(np.ascontiguousarray(groups).data)
        for split in (TRAINING, VALIDATION):
            digest.update("\0".join(splits.digests[split]).encode() + b"\1")
        memo = Memo(kept[0], novelty_path)
        key = memo_key("novelty", kept[1], digest.hexdigest(), pass_rate, seed)
        stored = memo.read(key, _readable)
        if stored is not None:
            return _novelty_from(stored)
        novelty = fit()
        memo.write(key, _novelty_bytes(novelty))
        return novelty
    from retrainer.training.fine_tune import image_features  # TensorFlow: the tuned extractor

    rows = _proportional_sample(groups if groups.ndim == 1 else rarest_labels(groups),
                                MAX_REFERENCES, seed)
    tuned = image_features([splits.images[TRAINING][row].path for row in rows], extractor)
    tuned_validation = validation.features
    if len(validation):
        tuned_validation = image_features([image.path for image in splits.images[VALIDATION]],
                                          extractor)
    return fit_novelty(tuned, groups[rows], tuned_validation, pass_rate, seed)
