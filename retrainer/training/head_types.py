"""The head stage's data, shared by its solvers: the layer (`Head`, numpy), the features it reads
(`FeatureSet`), how to train it (`TrainingConfig`) and what training measured (`EvalPoint`,
`TrainingResult`). No TensorFlow: training/head.py trains with the default solver without it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from retrainer.io.storage import AnyPath
from retrainer.training.convex import ConvexConfig, PathPoint
from retrainer.training.objectives import SOFTMAX, Objective
from retrainer.training.regularization import Regularization
from retrainer.training.solver import chunk_rows

SOLVERS = ("lbfgs", "sgd")


@dataclasses.dataclass(frozen=True)
class FeatureSet:
    """One split's features and integer labels.

    Attributes:
        features: float32 [N, D] bottleneck vectors.
        labels: int64 [N] class indices (multi-label: each image's first; batches balance it).
        targets: float32 [N, C] 0/1 rows of a multi-label split, None for single-label.
    """

    features: np.ndarray
    labels: np.ndarray
    targets: Optional[np.ndarray] = None

    @property
    def objective_targets(self) -> np.ndarray:
        """What the loss compares with: `targets` when set, else `labels`."""
        return self.labels if self.targets is None else self.targets

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclasses.dataclass(frozen=True)
class EvalPoint:
    """Metrics measured at one step (validation_* are None without validation data).

    Head training measures after each `eval_step_interval`-th step's update, as retrain.py: the
    training metrics on that step's batch, validation on a sampled batch. Fine-tuning measures
    after each epoch (step = epoch; 0 = before it), on the whole validation split.
    """

    step: int
    train_accuracy: Optional[float]
    cross_entropy: Optional[float]
    validation_accuracy: Optional[float]
    validation_count: int
    validation_cross_entropy: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """How to train the head (retrain.py's flags for SGD; -1 batch size = the whole split)."""

    steps: int
    learning_rate: float
    train_batch_size: int
    validation_batch_size: int
    eval_step_interval: int
    seed: int
    summaries_dir: Optional[AnyPath] = None
    checkpoint_path: Optional[AnyPath] = None
    cache_root: Optional[AnyPath] = None  # --bottleneck_dir: records which checkpoints it holds
    regularization: Regularization = Regularization()
    early_stopping_patience: int = 0  # evaluations without improvement; 0 = no early stopping
    solver: str = "sgd"
    convex: ConvexConfig = ConvexConfig()
    objective: Objective = SOFTMAX

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {list(SOLVERS)}. Received: {self.solver!r}")


@dataclasses.dataclass(frozen=True)
class TrainingResult:
    """The head and how it was trained.

    Attributes:
        head: the trained layer.
        history: the measurements (SGD: per evaluation step, up to where training stopped;
            lbfgs: per penalty of the path, `step` counting L-BFGS iterations).
        seconds: wall time.
        best_step: the SGD step early stopping kept (None without it).
        path: the lbfgs penalties tried (empty for SGD); `chosen` indexes the kept one.
    """

    head: "Head"
    history: tuple[EvalPoint, ...]
    seconds: float
    best_step: Optional[int] = None
    path: tuple[PathPoint, ...] = ()
    chosen: Optional[int] = None

    def summary(self) -> dict[str, Any]:
        """The `--json` "head" object: the solver, and for lbfgs the chosen penalty and path."""
        if self.chosen is None:
            return {"solver": "sgd"}
        return {"solver": "lbfgs", "l2": self.path[self.chosen].l2,
                "path": [dataclasses.asdict(point) for point in self.path]}

    @property
    def final(self) -> EvalPoint:
        """The measurement of the weights that were kept."""
        if self.chosen is not None:
            return self.history[self.chosen]
        if self.best_step is not None:
            return next(point for point in self.history if point.step == self.best_step)
        return self.history[-1]


@dataclasses.dataclass(eq=False)
class Head:
    """The new final layer: logits = features @ weights + biases, then the objective's
    probabilities (softmax, or sigmoid for multi-label). numpy: the default solver, the
    evaluation and a rerun whose outputs are kept need no TensorFlow; the SGD loop, fine-tuning
    and the exports compute with it as TensorFlow variables (training/head_layer.py), and write
    their trained values back here.

    Attributes:
        weights: float32 [D, C].
        biases: float32 [C].
        objective: softmax or sigmoid.
    """

    weights: np.ndarray
    biases: np.ndarray
    objective: Objective = SOFTMAX

    def logits(self, features: np.ndarray) -> np.ndarray:
        """float32 [N, D] features -> float32 [N, C] logits."""
        logits = np.asarray(features, np.float32) @ self.weights
        logits += self.biases
        return logits

    def probabilities(self, features: np.ndarray, rows: Optional[np.ndarray] = None
                      ) -> np.ndarray:
        """float32 [N, D] features -> float32 [N, C] probabilities (N may be 0), a chunk of
        rows at a time: no [N, C] array besides the result (100,000 test images of 1,000
        classes: 400 MB each).

        Args:
            features: float32 [N, D].
            rows: int [M] rows of `features` to score (then [M, C]); None: every row.
        """
        count = len(features) if rows is None else len(rows)
        probabilities = np.empty((count, self.weights.shape[1]), np.float32)
        step = chunk_rows(self.weights.shape[1], self.weights[:, 0].nbytes)
        for start in range(0, count, step):
            chosen = slice(start, start + step) if rows is None else rows[start:start + step]
            probabilities[start:start + step] = self.objective.probabilities(
                self.logits(features[chosen]))
        return probabilities
