"""What the training stage is asked to do: `RetrainConfig.training`, checked when it is built.

retrain.py's training flags and the newer ones (distortions, regularisation, early stopping,
fine-tuning; docs/training.md), under their flag names. Free of TensorFlow, so that the config
(and `retrain --help`) can build it; the training modules turn it into their own settings.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

from retrainer.errors import UsageError, require
from retrainer.io.storage import AnyPath

WHOLE_SET = -1  # a batch size meaning "the whole split, each example once"
HEAD_SOLVERS = ("auto", "lbfgs", "sgd")
# retrain.py's SGD defaults, used by the SGD solver when the flags are not given
SGD_STEPS = 4000
SGD_LEARNING_RATE = 0.01


@dataclasses.dataclass(frozen=True)
class TrainingOptions:
    """The head's training, distorted training vectors and fine-tuning.

    Raises:
        UsageError: on construction, naming the flag.
    """

    head_solver: str  # auto = lbfgs, or sgd when retrain.py's SGD flags are given
    how_many_training_steps: Optional[int]  # None: SGD_STEPS (or from train_epochs)
    learning_rate: Optional[float]  # None: SGD_LEARNING_RATE
    train_epochs: Optional[int]  # make_image_classifier's: SGD passes over the training images
    train_batch_size: int
    validation_batch_size: int
    test_batch_size: int
    eval_step_interval: int
    seed: int
    summaries_dir: AnyPath
    checkpoint_path: AnyPath
    bottleneck_dir: AnyPath  # distorted vectors are cached beside the plain ones
    show_progress: bool
    # regularisation and early stopping (head and fine-tuning)
    momentum: float
    dropout_rate: float
    l2_regularizer: float
    label_smoothing: float
    early_stopping: bool
    early_stopping_patience: int
    # distortions: retrain.py's four flags, and how many distorted versions of each image
    flip_left_right: bool
    random_crop: int
    random_scale: int
    random_brightness: int
    distorted_variants: int
    # fine-tuning the extractor's top blocks with the head
    do_fine_tuning: bool
    fine_tune_blocks: int
    fine_tune_epochs: int
    fine_tune_learning_rate: float
    # multi-label heads and the novelty score (docs/multi_label.md)
    multi_label: bool = False
    multi_label_threshold: Optional[float] = None
    novelty_pass_rate: float = 0.95

    def __post_init__(self) -> None:
        positive = "a positive number"
        steps, rate, epochs = self.how_many_training_steps, self.learning_rate, self.train_epochs
        checks = [
            ("head_solver", self.head_solver in HEAD_SOLVERS, f"one of {list(HEAD_SOLVERS)}"),
            ("how_many_training_steps", steps is None or steps >= 1, "at least 1"),
            ("train_epochs", epochs is None or epochs >= 1, "at least 1"),
            ("train_epochs", epochs is None or steps is None,
             "left out when --how_many_training_steps is given (both set the SGD length)"),
            ("learning_rate", rate is None or (math.isfinite(rate) and rate > 0), positive),
            ("eval_step_interval", self.eval_step_interval >= 1, "at least 1"),
            *((flag, getattr(self, flag) >= 1 or getattr(self, flag) == WHOLE_SET,
               "at least 1, or -1 for the whole set")
              for flag in ("train_batch_size", "validation_batch_size", "test_batch_size")),
            *((flag, getattr(self, flag) >= 0, "a percentage, 0 or more")
              for flag in ("random_crop", "random_scale")),
            ("random_brightness", 0 <= self.random_brightness <= 100,
             "a percentage from 0 to 100"),
            *((flag, getattr(self, flag) >= 1, "at least 1")
              for flag in ("distorted_variants", "fine_tune_epochs", "early_stopping_patience")),
            ("fine_tune_blocks", self.fine_tune_blocks >= 0, "0 or more"),
            ("fine_tune_learning_rate",
             math.isfinite(self.fine_tune_learning_rate) and self.fine_tune_learning_rate > 0,
             positive),
            *((flag, 0 <= getattr(self, flag) < 1, "from 0 up to (not including) 1")
              for flag in ("momentum", "dropout_rate", "label_smoothing")),
            ("l2_regularizer", math.isfinite(self.l2_regularizer) and self.l2_regularizer >= 0,
             "0 or a positive number"),
            ("multi_label_threshold", self.multi_label_threshold is None
             or 0 < self.multi_label_threshold < 1, "a probability between 0 and 1 (exclusive)"),
            ("novelty_pass_rate", 0 < self.novelty_pass_rate <= 1, "a fraction above 0, up to 1"),
        ]
        for flag, valid, expected in checks:
            require(flag, getattr(self, flag), valid, expected)
        if self.multi_label_threshold is not None and not self.multi_label:
            raise UsageError("--multi_label_threshold applies to --multi_label models; add "
                             "--multi_label or drop the threshold.")

    @property
    def solver(self) -> str:
        """The head's solver: --head_solver, where auto means lbfgs unless an SGD setting
        (--how_many_training_steps, --learning_rate, --train_epochs) was given."""
        if self.head_solver != "auto":
            return self.head_solver
        sgd_asked = (self.how_many_training_steps, self.learning_rate, self.train_epochs)
        return "sgd" if any(value is not None for value in sgd_asked) else "lbfgs"

    def training_steps(self, training_images: int) -> int:
        """SGD steps: --how_many_training_steps; or --train_epochs passes over the training
        images at --train_batch_size (rounded up, as every image is then drawn once per epoch
        on average); else retrain.py's 4,000.

        Args:
            training_images: how many (decodable) training images there are.
        """
        if self.train_epochs is not None:
            whole = self.train_batch_size == WHOLE_SET  # each step sees every image
            per_epoch = 1 if whole else math.ceil(training_images / self.train_batch_size)
            return max(1, self.train_epochs * per_epoch)
        steps = self.how_many_training_steps
        return SGD_STEPS if steps is None else steps

    @property
    def sgd_learning_rate(self) -> float:
        """SGD learning rate: --learning_rate, else retrain.py's 0.01."""
        return SGD_LEARNING_RATE if self.learning_rate is None else self.learning_rate
