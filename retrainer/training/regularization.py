"""The regularisation make_image_classifier users know, for the SGD loop (head and fine-tuning).

All off by default, so a plain SGD run is retrain.py's: plain SGD on the mean cross-entropy. Each
option is a trace-time branch: an option left at 0 adds no operation to the graph.
- momentum: SGD with momentum (TensorFlow's MomentumOptimizer update: v = m*v + g; w -= lr*v);
- dropout_rate: dropout on the bottleneck vector before the new layer, as make_image_classifier;
- l2_regularizer: l2 * sum(weights**2) of the new layer's weights added to the loss (Keras' l2);
- label_smoothing: targets (1 - s) * one_hot + s / C (Keras' CategoricalCrossentropy).
The settings only: training/objective_ops.py applies them (`dropout`, `regularized_loss`).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Regularization:
    """Regularisation settings (0 = off for each)."""

    momentum: float = 0.0
    dropout_rate: float = 0.0
    l2_regularizer: float = 0.0
    label_smoothing: float = 0.0
