"""The pipeline's hooks for training on images: distorted training vectors and fine-tuning.

`retrainer.pipeline.run` calls these; each is a no-op for a plain run (no distortion flag, no
--do_fine_tuning), which therefore stays retrain.py's cached-vector training, number for number.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import numpy as np

from retrainer.io.storage import AnyPath
from retrainer.training.distortions import Distortions
from retrainer.training.head_types import FeatureSet, Head, TrainingConfig
from retrainer.training.objectives import SIGMOID, SOFTMAX
from retrainer.training.options import TrainingOptions
from retrainer.training.regularization import Regularization

if TYPE_CHECKING:
    from retrainer.extractors import FeatureExtractor
    from retrainer.training.fine_tune import FineTuneResult

log = logging.getLogger(__name__)


def distortions_of(options: TrainingOptions) -> Distortions:
    """The four retrain.py distortion flags of a `RetrainConfig`."""
    return Distortions(options.flip_left_right, options.random_crop, options.random_scale,
                       options.random_brightness)


def regularization_of(options: TrainingOptions) -> Regularization:
    """The four regularisation flags of a `RetrainConfig`."""
    return Regularization(options.momentum, options.dropout_rate, options.l2_regularizer,
                          options.label_smoothing)


def early_stopping_patience_of(options: TrainingOptions) -> int:
    """--early_stopping_patience when --early_stopping is on, else 0 (never stop early)."""
    return options.early_stopping_patience if options.early_stopping else 0


def training_options(options: TrainingOptions, training_images: int,
                     checkpoint_path: Optional[AnyPath] = None) -> TrainingConfig:
    """How the head is trained on `training_images` images (which --train_epochs counts); its
    checkpoint goes to `checkpoint_path` (default: the flag's, or a staging folder while quality
    gates are pending)."""
    return TrainingConfig(
        steps=options.training_steps(training_images),
        learning_rate=options.sgd_learning_rate,
        train_batch_size=options.train_batch_size,
        validation_batch_size=options.validation_batch_size,
        eval_step_interval=options.eval_step_interval,
        seed=options.seed,
        summaries_dir=options.summaries_dir,
        checkpoint_path=options.checkpoint_path if checkpoint_path is None else checkpoint_path,
        cache_root=options.bottleneck_dir,
        regularization=regularization_of(options),
        early_stopping_patience=early_stopping_patience_of(options),
        solver=options.solver,
        objective=SIGMOID if options.multi_label else SOFTMAX,
    )


def training_features(options: TrainingOptions, extractor: FeatureExtractor, images: Sequence[Any],
                      plain: FeatureSet) -> tuple[FeatureSet, Optional[dict[str, Any]]]:
    """The head's training rows: the plain vectors, or with distortions V variants per image.

    Args:
        options: the training view of the config.
        extractor: the feature extractor.
        images: the decodable training images (with `.path`), aligned with `plain`.
        plain: their plain vectors and labels.

    Returns:
        (FeatureSet float32 [N*V, D] / int64 [N*V], {"variants", "computed", "reused"} or None).
    """
    rows, _, summary = training_rows(options, extractor, images, plain)
    return rows, summary


def training_rows(options: TrainingOptions, extractor: FeatureExtractor, images: Sequence[Any],
                  plain: FeatureSet
                  ) -> tuple[FeatureSet, np.ndarray, Optional[dict[str, Any]]]:
    """`training_features`, with the position in `images` of each row's image (int64 [rows]):
    with distortions, an image whose distorted versions could not be made has no rows."""
    distortions = distortions_of(options)
    if not distortions.enabled:
        return plain, np.arange(len(plain), dtype=np.int64), None
    from retrainer.training.distorted_bottlenecks import compute_distorted_bottlenecks

    distorted = compute_distorted_bottlenecks(
        [image.path for image in images], extractor, options.bottleneck_dir, distortions,
        options.distorted_variants, options.seed, show_progress=options.show_progress,
    )
    sources = np.repeat(np.flatnonzero(distorted.ok), options.distorted_variants)
    features = distorted.vectors[distorted.ok].reshape(-1, distorted.vectors.shape[-1])
    summary = {"variants": options.distorted_variants, "computed": distorted.computed,
               "reused": distorted.reused, "seconds": distorted.seconds}
    targets = None if plain.targets is None else plain.targets[sources]
    return FeatureSet(features, plain.labels[sources], targets), sources, summary


def fine_tune_if_asked(options: TrainingOptions, extractor: FeatureExtractor, head: Head,
                       images: Mapping[str, Sequence[Any]], features: dict[str, FeatureSet],
                       ) -> tuple[Optional[FineTuneResult], dict[str, FeatureSet]]:
    """With --do_fine_tuning: fine-tune, then recompute the validation and test vectors with the
    tuned extractor (the cached ones are stale).

    Args:
        options: the training view of the config.
        extractor, head: updated in place.
        images: {split: decodable images (with `.path`)}.
        features: {split: plain FeatureSet}, aligned with `images`.

    Returns:
        (FineTuneResult or None, {"validation": ..., "testing": ...} FeatureSets to evaluate on).
    """
    held_out = {name: features[name] for name in ("validation", "testing")}
    if not options.do_fine_tuning:
        return None, held_out
    from retrainer.training.fine_tune import FineTuneConfig, ImageSplit, fine_tune, image_features

    def split(name: str) -> ImageSplit:
        return ImageSplit(tuple(image.path for image in images[name]),
                          features[name].objective_targets)

    result = fine_tune(extractor, head, split("training"), split("validation"), FineTuneConfig(
        blocks=options.fine_tune_blocks,
        epochs=options.fine_tune_epochs,
        learning_rate=options.fine_tune_learning_rate,
        batch_size=options.train_batch_size,
        seed=options.seed,
        distortions=distortions_of(options),
        regularization=regularization_of(options),
        early_stopping_patience=early_stopping_patience_of(options),
        show_progress=options.show_progress,
    ))
    for name, split_features in held_out.items():
        if len(split_features):
            held_out[name] = dataclasses.replace(split_features, features=image_features(
                [image.path for image in images[name]], extractor))
    return result, held_out


def fine_tuning_summary(options: TrainingOptions, result: Optional[FineTuneResult]
                        ) -> Optional[dict[str, Any]]:
    """The `--json` "fine_tuning" object (None without --do_fine_tuning)."""
    if result is None:
        return None
    last = result.history[-1]
    kept = last if result.best_epoch is None else result.history[result.best_epoch]
    return {
        "blocks": options.fine_tune_blocks,
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
