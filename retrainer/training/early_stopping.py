"""Early stopping on validation cross-entropy, keeping the best weights (Keras' EarlyStopping with
restore_best_weights), shared by head training (per evaluation) and fine-tuning (per epoch).

It only ever sees validation metrics: the test split stays untouched until the final evaluation.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)


class BestWeights:
    """Tracks the lowest validation cross-entropy and a copy of the weights that gave it.

    Args:
        variables: the variables being trained.
        patience: measurements in a row without improvement before stopping; 0 = off.
        has_validation: False turns early stopping off (with a warning when it was asked for).
    """

    def __init__(self, variables: Sequence[tf.Variable], patience: int,
                 has_validation: bool) -> None:
        if patience and not has_validation:
            log.warning("No validation images: early stopping is off.")
        self.enabled = bool(patience) and has_validation
        self.variables, self.patience = tuple(variables), patience
        self.best: Optional[tuple[float, int, list[np.ndarray]]] = None
        self.since_best = 0

    def record(self, validation_cross_entropy: Optional[float], when: int) -> bool:
        """Record one measurement at step/epoch `when`; True once it is time to stop."""
        if not self.enabled:
            return False
        if self.best is None or validation_cross_entropy < self.best[0]:
            values = [variable.numpy() for variable in self.variables]
            self.best, self.since_best = (validation_cross_entropy, when, values), 0
            return False
        self.since_best += 1
        if self.since_best < self.patience:
            return False
        log.info("Early stopping at %d: validation cross entropy has not improved for %d "
                 "measurements; keeping %d (%.6f).", when, self.patience, self.best[1],
                 self.best[0])
        return True

    def restore_best(self) -> Optional[int]:
        """Put the best weights back; returns when they were measured (None when off)."""
        if self.best is None:
            return None
        for variable, value in zip(self.variables, self.best[2]):
            variable.assign(value)
        return self.best[1]
