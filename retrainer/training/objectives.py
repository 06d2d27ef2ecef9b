"""What the head predicts: one class per image (softmax) or any number of them (sigmoid).

An objective is the one place that knows how logits become probabilities, what the training loss
is and how the validation split scores a head, so every solver and loop takes it as a parameter
instead of being written once per kind of label. Targets are int64 [N] class indices for
`SOFTMAX` and float32 [N, C] 0/1 rows for `SIGMOID`. These are numpy (the convex solver and the
evaluation need no TensorFlow); training/objective_ops.py holds the same formulas as TensorFlow
ops for the SGD loop, fine-tuning and the exported graph.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Objective:
    """Softmax cross-entropy (single label) or sigmoid binary cross-entropy (multi-label).

    Attributes:
        name: "softmax" or "sigmoid".
    """

    name: str

    def __post_init__(self) -> None:
        if self.name not in ("softmax", "sigmoid"):
            raise ValueError(f"name must be one of ['softmax', 'sigmoid']. Received: {self.name!r}")

    @property
    def multi_label(self) -> bool:
        return self.name == "sigmoid"

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """float32 [N, C] logits -> float32 [N, C] probabilities (computed in place: the caller
        hands over `logits`)."""
        logits = np.asarray(logits, np.float32)
        if self.multi_label:
            return _sigmoid(logits, out=logits)
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        return logits

    def loss(self, targets: np.ndarray, logits: np.ndarray, label_smoothing: float = 0.0
             ) -> float:
        """Mean cross entropy, with targets smoothed towards uniform if asked."""
        total, _ = self.loss_and_gradient(targets, np.array(logits, np.float32), label_smoothing)
        return total / max(len(logits), 1)

    def loss_and_gradient(self, targets: np.ndarray, logits: np.ndarray,
                          label_smoothing: float = 0.0) -> tuple[float, np.ndarray]:
        """The rows' summed cross entropy (a float64 sum) and its gradient in the logits.

        Args:
            targets: int64 [N] classes (softmax) or float [N, C] 0/1 rows (sigmoid).
            logits: float32 [N, C]; overwritten by the gradient (no second [N, C] array).
            label_smoothing: targets smoothed towards uniform (0 = off).

        Returns:
            (sum over rows of the loss, float32 [N, C] gradient of that sum: probabilities -
            smoothed targets), the gradient in `logits`' memory.
        """
        count, classes = logits.shape
        if self.multi_label:
            dense = np.asarray(targets, np.float32)
            if label_smoothing:
                dense = dense * np.float32(1.0 - label_smoothing) + np.float32(
                    0.5 * label_smoothing)
            # max(z, 0) - z t + log(1 + exp(-|z|)) per label, as tf.nn's sigmoid cross entropy
            total = float(np.sum(np.maximum(logits, 0) - logits * dense, dtype=np.float64))
            total += float(np.sum(np.log1p(np.exp(-np.abs(logits))), dtype=np.float64))
            gradient = _sigmoid(logits, out=logits)
            gradient -= dense
            return total, gradient
        rows = np.arange(count)
        logits -= logits.max(axis=1, keepdims=True)
        given = logits[rows, targets].astype(np.float64)
        mean_logit = logits.mean(axis=1, dtype=np.float64) if label_smoothing else 0.0
        np.exp(logits, out=logits)
        sums = logits.sum(axis=1)
        # -sum_j t_j (z_j - logsumexp z), t = (1 - s) one-hot + s / C
        per_row = (np.log(sums).astype(np.float64) - (1.0 - label_smoothing) * given
                   - label_smoothing * mean_logit)
        logits /= sums[:, np.newaxis]
        logits[rows, targets] -= np.float32(1.0 - label_smoothing)
        if label_smoothing:
            logits -= np.float32(label_smoothing / classes)
        return float(per_row.sum()), logits

    def hits(self, targets: np.ndarray, logits: np.ndarray) -> float:
        """How many rows are right (softmax: the top class is the label; sigmoid: the share of
        the row's decisions at probability 0.5 that are right, summed over rows)."""
        if self.multi_label:
            right = (logits > 0) == (np.asarray(targets) > 0.5)
            return float(right.mean(axis=1).sum()) if right.size else 0.0
        return float(np.count_nonzero(logits.argmax(axis=1) == targets))

    def accuracy(self, targets: np.ndarray, logits: np.ndarray) -> float:
        """Softmax: the fraction of rows whose top class is the label. Sigmoid: the fraction of
        (row, class) decisions at probability 0.5 that are right."""
        return self.hits(targets, logits) / max(len(logits), 1)


def _sigmoid(logits: np.ndarray, out: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) without overflow, written into `out` (float32 [N, C])."""
    small = np.exp(-np.abs(logits))  # in (0, 1]
    positive = logits >= 0
    np.divide(np.where(positive, 1.0, small), 1.0 + small, out=out, dtype=np.float32)
    return out


SOFTMAX = Objective("softmax")
SIGMOID = Objective("sigmoid")
