"""The pipeline's hooks for training on images: distorted training vectors and fine-tuning.

`retrainer.pipeline.run` calls these; each is a no-op for a plain run (no distortion flag, no
--do_fine_tuning), which therefore stays retrain.py's cached-vector training, number for number.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import numpy as np

from retrainer.extractors import FeatureExtractor
from retrainer.training.distortions import Distortions
from retrainer.training.fine_tune import (
    FineTuneConfig,
    FineTuneResult,
    ImageSplit,
    fine_tune,
    image_features,
)
from retrainer.training.head import FeatureSet, Head, TrainingConfig
from retrainer.training.regularization import Regularization

log = logging.getLogger(__name__)


def distortions_of(config) -> Distortions:
    """The four retrain.py distortion flags of a `RetrainConfig`."""
    return Distortions(config.flip_left_right, config.random_crop, config.random_scale,
                       config.random_brightness)


def regularization_of(config) -> Regularization:
    """The four regularisation flags of a `RetrainConfig`."""
    return Regularization(config.momentum, config.dropout_rate, config.l2_regularizer,
                          config.label_smoothing)


def early_stopping_patience_of(config) -> int:
    """--early_stopping_patience when --early_stopping is on, else 0 (never stop early)."""
    return config.early_stopping_patience if config.early_stopping else 0


def training_options(config) -> TrainingConfig:
    """How the head is trained, from a `RetrainConfig`."""
    return TrainingConfig(
        steps=config.training_steps,
        learning_rate=config.sgd_learning_rate,
        train_batch_size=config.train_batch_size,
        validation_batch_size=config.validation_batch_size,
        eval_step_interval=config.eval_step_interval,
        seed=config.seed,
        summaries_dir=config.summaries_dir,
        checkpoint_path=config.checkpoint_path,
        regularization=regularization_of(config),
        early_stopping_patience=early_stopping_patience_of(config),
        solver=config.solver,
    )


def check_fine_tunable(config, extractor: FeatureExtractor) -> None:
    """Fail before the long work when --do_fine_tuning cannot work with this extractor.

    Raises:
        UsageError: the extractor cannot be trained.
    """
    if config.do_fine_tuning:
        extractor.fine_tunable_variables(config.fine_tune_blocks)


def training_features(config, extractor: FeatureExtractor, images: Sequence,
                      plain: FeatureSet) -> tuple[FeatureSet, Optional[dict[str, Any]]]:
    """The head's training rows: the plain vectors, or with distortions V variants per image.

    Args:
        config: the RetrainConfig.
        extractor: the feature extractor.
        images: the decodable training images (with `.path`), aligned with `plain`.
        plain: their plain vectors and labels.

    Returns:
        (FeatureSet float32 [N*V, D] / int64 [N*V], {"variants", "computed", "reused"} or None).
    """
    from retrainer.training.distorted_bottlenecks import compute_distorted_bottlenecks

    distortions = distortions_of(config)
    if not distortions.enabled:
        return plain, None
    distorted = compute_distorted_bottlenecks(
        [image.path for image in images], extractor, config.bottleneck_dir, distortions,
        config.distorted_variants, config.seed, show_progress=config.show_progress,
    )
    rows = distorted.ok
    features = distorted.vectors[rows].reshape(-1, distorted.vectors.shape[-1])
    labels = np.repeat(plain.labels[rows], config.distorted_variants)
    summary = {"variants": config.distorted_variants, "computed": distorted.computed,
               "reused": distorted.reused, "seconds": distorted.seconds}
    return FeatureSet(features, labels), summary


def fine_tune_if_asked(config, extractor: FeatureExtractor, head: Head,
                       images: dict[str, Sequence], features: dict[str, FeatureSet],
                       ) -> tuple[Optional[FineTuneResult], FeatureSet]:
    """With --do_fine_tuning: fine-tune, then recompute the test vectors with the tuned extractor.

    Args:
        config: the RetrainConfig.
        extractor, head: updated in place.
        images: {split: decodable images (with `.path`)}.
        features: {split: plain FeatureSet}, aligned with `images`.

    Returns:
        (FineTuneResult or None, the test FeatureSet to evaluate on).
    """
    if not config.do_fine_tuning:
        return None, features["testing"]

    def split(name: str) -> ImageSplit:
        return ImageSplit(tuple(image.path for image in images[name]), features[name].labels)

    result = fine_tune(extractor, head, split("training"), split("validation"), FineTuneConfig(
        blocks=config.fine_tune_blocks,
        epochs=config.fine_tune_epochs,
        learning_rate=config.fine_tune_learning_rate,
        batch_size=config.train_batch_size,
        seed=config.seed,
        distortions=distortions_of(config),
        regularization=regularization_of(config),
        early_stopping_patience=early_stopping_patience_of(config),
        show_progress=config.show_progress,
    ))
    test = features["testing"]
    if len(test):
        test = FeatureSet(image_features([image.path for image in images["testing"]], extractor),
                          test.labels)
    return result, test


def fine_tuning_summary(config, result: Optional[FineTuneResult]) -> Optional[dict[str, Any]]:
    """The `--json` "fine_tuning" object (None without --do_fine_tuning)."""
    if result is None:
        return None
    last = result.history[-1]
    kept = last if result.best_epoch is None else result.history[result.best_epoch]
    return {
        "blocks": config.fine_tune_blocks,
        "tuned_parameters": result.tuned_parameters,
        "epochs_run": last.step,
        "best_epoch": result.best_epoch,
        "validation_accuracy": kept.validation_accuracy,
        "history": [
            {"epoch": point.step, "train_loss": point.cross_entropy,
             "validation_accuracy": point.validation_accuracy,
             "validation_cross_entropy": point.validation_cross_entropy}
            for point in result.history
        ],
        "seconds": result.seconds,
    }
