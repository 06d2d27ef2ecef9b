"""Head training stage: a new final layer (dense D -> C) fitted to bottleneck vectors.

Two solvers (docs/training.md):
- "lbfgs", the default: the full-batch convex fit whose L2 strength is chosen on the validation
  split (training/convex.py), in numpy: no TensorFlow;
- "sgd": retrain.py's loop -- plain SGD on random class-balanced batches -- in TensorFlow
  (training/sgd_head.py), imported only when asked for.
The checkpoint (training/checkpoint.py) and TensorBoard files (training/events.py) need
TensorFlow only when they cannot be kept or written without it.
Takes arrays of features, never cache paths, so later stages (distortions, fine-tuning) can feed
freshly computed features instead. The layer's outputs are softmax probabilities, or sigmoid ones
for a multi-label objective (training/objectives.py). The stage's data types live in
training/head_types.py.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, Optional

from retrainer.training.checkpoint import write_checkpoint
from retrainer.training.convex import fit_head
from retrainer.training.events import write_path_summaries
from retrainer.training.head_types import (
    EvalPoint,
    FeatureSet,
    Head,
    TrainingConfig,
    TrainingResult,
)

log = logging.getLogger(__name__)


def train_head(
    train: FeatureSet,
    validation: FeatureSet,
    num_classes: int,
    config: TrainingConfig,
    on_store: Optional[Callable[[int, Head], None]] = None,
    store_every: int = 0,
) -> TrainingResult:
    """Train a new final layer on bottleneck vectors.

    Args:
        train: the training split; at least one example.
        validation: the validation split; may be empty (validation is then skipped).
        num_classes: C, the number of output classes (classes may lack training examples).
        config: the solver and its settings, the seed and where to write summaries/checkpoint.
        on_store: SGD only: called as on_store(step, head) every `store_every` steps (step > 0),
            e.g. to export intermediate graphs.
        store_every: 0 = never call `on_store`.

    Returns:
        The trained head, its measurements, the time taken, and with early stopping the step
        whose weights were kept (lbfgs: the penalty path and the chosen point).
    """
    started = time.perf_counter()
    if not len(validation):
        log.warning("No validation images: skipping validation during training.")
    if config.solver == "lbfgs":
        result = _train_convex(train, validation, num_classes, config)
    else:
        from retrainer.training.sgd_head import train_sgd

        result = train_sgd(train, validation, num_classes, config, on_store, store_every)
    if config.checkpoint_path is not None:
        kept_steps = config.steps if result.best_step is None else result.best_step + 1
        if config.solver == "lbfgs":
            kept_steps = result.final.step
        write_checkpoint(result.head.weights, result.head.biases, kept_steps,
                         config.checkpoint_path, config.cache_root)
    return dataclasses.replace(result, seconds=time.perf_counter() - started)


def _train_convex(train: FeatureSet, validation: FeatureSet, num_classes: int,
                  config: TrainingConfig) -> TrainingResult:
    """The lbfgs solver: the path's fits as measurements (step = L-BFGS iterations so far)."""
    convex = dataclasses.replace(config.convex, objective=config.objective,
                                 label_smoothing=config.regularization.label_smoothing)
    fit = fit_head(train.features, train.objective_targets, validation.features,
                   validation.objective_targets,
                   num_classes, convex)
    head = Head(fit.weights, fit.biases, config.objective)
    history, iterations = [], 0
    for point in fit.path:
        iterations += point.iterations
        history.append(EvalPoint(iterations, point.train_accuracy, point.train_cross_entropy,
                                 point.validation_accuracy, len(validation) if len(validation)
                                 else 0, point.validation_cross_entropy))
    write_path_summaries(config.summaries_dir, fit.path, history)
    return TrainingResult(head, tuple(history), 0.0, None, fit.path, fit.chosen)
