"""Per-label decision thresholds of a multi-label head, chosen on the validation split.

For each label, the threshold that maximises that label's F1 on validation (or one fixed value for
every label, `--multi_label_threshold`). Only validation targets and probabilities come in, so the
test split cannot influence the choice. A label without a positive validation image has no F1 to
maximise and keeps DEFAULT_THRESHOLD.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5


def choose_thresholds(validation_targets: np.ndarray, validation_probabilities: np.ndarray,
                      fixed: Optional[float] = None,
                      labels: Optional[tuple[str, ...]] = None) -> np.ndarray:
    """One threshold per label: label c is predicted when its probability is >= thresholds[c].

    Args:
        validation_targets: [N, C] 0/1, the validation split's labels.
        validation_probabilities: float [N, C], the head's probabilities on the same images.
        fixed: a threshold for every label (no choice); None = choose per label for F1.
        labels: names for the log message about labels kept at the default.

    Returns:
        float32 [C] thresholds in (0, 1].
    """
    num_classes = validation_probabilities.shape[1]
    if fixed is not None:
        return np.full(num_classes, fixed, np.float32)
    truth = np.asarray(validation_targets) > 0.5
    thresholds = np.full(num_classes, DEFAULT_THRESHOLD, np.float32)
    unchosen = []
    for c in range(num_classes):
        chosen = best_f1_threshold(truth[:, c], np.asarray(validation_probabilities[:, c]))
        if chosen is None:
            unchosen.append(labels[c] if labels else str(c))
        else:
            thresholds[c] = chosen
    if unchosen:
        log.warning("No positive validation image for %d label(s) (%s): their threshold stays "
                    "%g.", len(unchosen), ", ".join(unchosen[:5]), DEFAULT_THRESHOLD)
    return thresholds


def best_f1_threshold(truth: np.ndarray, scores: np.ndarray) -> Optional[float]:
    """The threshold with the highest F1 of one label, None when there is no positive.

    Every cut between two distinct sorted scores is tried; the threshold returned lies halfway
    between the lowest score kept and the highest score left out, so small score changes (e.g.
    a quantized export) do not flip validation decisions. Ties in F1 keep the higher threshold.

    Args:
        truth: bool [N].
        scores: float [N].
    """
    positives = int(np.count_nonzero(truth))
    if positives == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order].astype(np.float64)
    hits = np.cumsum(truth[order])
    ends = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])
    f1 = 2 * hits[ends] / (ends + 1 + positives)
    best = int(np.argmax(f1))
    kept = sorted_scores[ends[best]]
    left_out = sorted_scores[ends[best] + 1] if ends[best] + 1 < len(sorted_scores) else 0.0
    halfway = np.float32((kept + left_out) / 2)
    return float(halfway) if halfway > left_out else float(kept)  # adjacent floats: keep `kept`
