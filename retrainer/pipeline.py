"""The retrain pipeline: discover/split -> extractor -> bottlenecks -> train -> evaluate -> export.

`RetrainConfig` holds every option with its default (the CLI reads its defaults from here);
`run(config)` does the work and returns a `RetrainResult`. TensorFlow and the stage modules are
imported inside `run`, so reading the config (e.g. for `retrain --help`) stays instant.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Optional

from retrainer._output_paths import check_output_paths, remove_stale_export_temporaries
from retrainer.engines import AUTO, FLOAT32, PRECISIONS
from retrainer.errors import DataError, QualityGateError, UsageError
from retrainer.exports.quantization import DEFAULT_CALIBRATION_IMAGES
from retrainer.split import SPLITS, TESTING, TRAINING, VALIDATION, validate_percentages

log = logging.getLogger(__name__)

# Same value as retrainer.extractors.DEFAULT_EXTRACTOR, which cannot be imported here: it loads
# TensorFlow (tests check the two agree).
DEFAULT_EXTRACTOR = "efficientnet_lite0"
EXTRACTOR_PRECISIONS = (AUTO, *PRECISIONS)
# retrain.py wrote to fixed /tmp paths, which clashed between users (tensorflow/hub#302).
DEFAULT_OUTPUT_DIR = Path("retrain_output")
WHOLE_SET = -1
_OP_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\-/]*$")  # TensorFlow's rule for op names


def default_bottleneck_dir() -> Path:
    """`${XDG_CACHE_HOME:-~/.cache}/retrainer/bottlenecks`: shared by runs, survives reboots."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache_home) / "retrainer" / "bottlenecks"


@dataclasses.dataclass(frozen=True)
class RetrainConfig:
    """Every option of a retrain run (retrain.py's flag names and defaults, plus a few new ones).

    Raises:
        UsageError: on construction, for any value that cannot work (the message names the flag).
    """

    image_dir: Path
    output_graph: Path = DEFAULT_OUTPUT_DIR / "output_graph.pb"
    output_labels: Path = DEFAULT_OUTPUT_DIR / "output_labels.txt"
    summaries_dir: Path = DEFAULT_OUTPUT_DIR / "retrain_logs"
    bottleneck_dir: Path = dataclasses.field(default_factory=default_bottleneck_dir)
    how_many_training_steps: int = 4000
    learning_rate: float = 0.01
    # training on images: distortions, fine-tuning, early stopping, regularisation (docs/training.md)
    flip_left_right: bool = False
    random_crop: int = 0
    random_scale: int = 0
    random_brightness: int = 0
    distorted_variants: int = 4
    do_fine_tuning: bool = False
    fine_tune_blocks: int = 4
    fine_tune_epochs: int = 10
    fine_tune_learning_rate: float = 0.003
    early_stopping: bool = False
    early_stopping_patience: int = 10
    momentum: float = 0.0
    dropout_rate: float = 0.0
    l2_regularizer: float = 0.0
    label_smoothing: float = 0.0
    testing_percentage: float = 10
    validation_percentage: float = 10
    # dataset audit (retrainer/audit, docs/audit.md)
    audit_file: Path = DEFAULT_OUTPUT_DIR / "audit.json"
    skip_audit: bool = False
    keep_duplicates_in_one_split: bool = False
    eval_step_interval: int = 10
    train_batch_size: int = 100
    test_batch_size: int = WHOLE_SET
    validation_batch_size: int = 100
    print_misclassified_test_images: bool = False
    # reports and quality gates (issue 12): None turns a report off; gates are fractions or None
    metrics_file: Optional[Path] = DEFAULT_OUTPUT_DIR / "metrics.json"
    report_html: Optional[Path] = DEFAULT_OUTPUT_DIR / "report.html"
    assert_accuracy_at_least: Optional[float] = None
    assert_recall_at_least: Optional[float] = None
    final_tensor_name: str = "final_result"
    intermediate_store_frequency: int = 0
    intermediate_output_graphs_dir: Path = DEFAULT_OUTPUT_DIR / "intermediate_graphs"
    saved_model_dir: Optional[Path] = None
    # deployable exports: TFLite and the export report (docs/exports.md)
    tflite_output_file: Optional[Path] = None
    tflite_quantization: tuple[str, ...] = ("none",)
    tflite_calibration_images: int = DEFAULT_CALIBRATION_IMAGES
    max_export_accuracy_drop: Optional[float] = None
    tfhub_module: str = DEFAULT_EXTRACTOR
    # extractor precision (retrainer/engines): how the bottleneck stage runs the extractor
    extractor_precision: str = AUTO
    image_size: Optional[int] = None
    checkpoint_path: Path = DEFAULT_OUTPUT_DIR / "checkpoint" / "retrain_checkpoint"
    seed: int = 0
    show_progress: bool = True

    def __post_init__(self) -> None:
        for field in ("image_dir", "output_graph", "output_labels", "summaries_dir",
                      "bottleneck_dir", "intermediate_output_graphs_dir", "checkpoint_path",
                      "saved_model_dir", "audit_file"):
            value = getattr(self, field)
            if value is not None:
                if not os.fspath(value):
                    raise UsageError(f"--{field} must not be empty.")
                object.__setattr__(self, field, Path(value))
        validate_percentages(self.validation_percentage, self.testing_percentage)
        self._require("how_many_training_steps", lambda steps: steps >= 1, "at least 1")
        self._require("learning_rate", lambda rate: math.isfinite(rate) and rate > 0,
                      "a positive number")
        self._require("eval_step_interval", lambda steps: steps >= 1, "at least 1")
        for field in ("train_batch_size", "validation_batch_size", "test_batch_size"):
            self._require(field, lambda size: size >= 1 or size == WHOLE_SET,
                          "at least 1, or -1 for the whole set")
        self._require("intermediate_store_frequency", lambda steps: steps >= 0,
                      "0 (never) or a number of steps")
        self._require("final_tensor_name",
                      lambda name: bool(_OP_NAME.match(name)) and name != "Placeholder",
                      "a TensorFlow op name other than Placeholder (letters, digits, _ . - /)")
        self._require("image_size", lambda size: size is None or size >= 1, "a positive size")
        self._require("extractor_precision", lambda name: name in EXTRACTOR_PRECISIONS,
                      f"one of {list(EXTRACTOR_PRECISIONS)}")
        self._require("seed", lambda seed: 0 <= seed < 2**63, "a number from 0 to 2**63 - 1")
        # reports and quality gates: an empty path turns that report off
        for field in ("metrics_file", "report_html"):
            value = getattr(self, field)
            object.__setattr__(self, field, Path(value) if value not in (None, "") else None)
        for field in ("assert_accuracy_at_least", "assert_recall_at_least"):
            self._require(field, lambda x: x is None or 0 <= x <= 1, "a fraction from 0 to 1")
        if self.metrics_file is not None and self.metrics_file == self.report_html:
            raise UsageError(f"--metrics_file and --report_html are the same file: "
                             f"{self.metrics_file}")
        # training on images
        for field in ("random_crop", "random_scale"):
            self._require(field, lambda percent: percent >= 0, "a percentage, 0 or more")
        self._require("random_brightness", lambda percent: 0 <= percent <= 100,
                      "a percentage from 0 to 100")
        for field in ("distorted_variants", "fine_tune_epochs", "early_stopping_patience"):
            self._require(field, lambda count: count >= 1, "at least 1")
        self._require("fine_tune_blocks", lambda blocks: blocks >= 0, "0 or more")
        self._require("fine_tune_learning_rate", lambda rate: math.isfinite(rate) and rate > 0,
                      "a positive number")
        for field in ("momentum", "dropout_rate", "label_smoothing"):
            self._require(field, lambda value: 0 <= value < 1, "from 0 up to (not including) 1")
        self._require("l2_regularizer", lambda value: math.isfinite(value) and value >= 0,
                      "0 or a positive number")
        if self.keep_duplicates_in_one_split and self.skip_audit:
            raise UsageError("--keep_duplicates_in_one_split needs the audit; drop --skip_audit.")
        from retrainer.exports.validation import validate_export_options

        validate_export_options(self)
        if self.output_graph == self.output_labels:
            raise UsageError(
                f"--output_graph and --output_labels are the same file: {self.output_graph}"
            )

    @property
    def has_quality_gates(self) -> bool:
        return self.assert_accuracy_at_least is not None or self.assert_recall_at_least is not None

    def _require(self, field: str, valid: Callable[[Any], bool], expected: str) -> None:
        value = getattr(self, field)
        if not valid(value):
            raise UsageError(f"--{field} must be {expected}. Received: {value!r}.")


@dataclasses.dataclass(frozen=True)
class RetrainResult:
    """What a run did and produced; `to_json()` is the `--json` document.

    Attributes:
        labels: class names in class-index order.
        counts: {label: {split: images used}} (decodable images only).
        skipped: (relpath, reason) of every file left out: by discovery, or undecodable.
        bottlenecks_computed, bottlenecks_reused: vectors computed now / read from the cache.
        train_accuracy, cross_entropy: on the last step's training batch.
        validation_accuracy, validation_count: on the last step's validation batch (None, 0
            without validation images).
        test_accuracy, test_count: the final test (None, 0 without test images).
        test_per_class: {label: {"correct": n, "total": n}} over the final test.
        misclassified: (relpath, predicted label) of each wrong test prediction.
        outputs: {flag name: path written}, plus "intermediate_graphs": [paths].
        seconds: wall time per stage and "total".
        best_step: the head training step kept by --early_stopping (None without it).
        distorted: {"variants", "computed", "reused", "seconds"} of the distorted training
            vectors (None without distortion flags).
        fine_tuning: what --do_fine_tuning did (None without it); see docs/training.md.
        audit: the audit.json document (docs/audit.md), None with --skip_audit.
        report: per-class metrics, confusion matrices, history, gates (retrainer.reports).
        extractor_precision, extractor_id: how the bottlenecks were computed; the id names their
            cache namespace.
    """

    labels: tuple[str, ...]
    counts: dict[str, dict[str, int]]
    skipped: tuple[tuple[str, str], ...]
    bottlenecks_computed: int
    bottlenecks_reused: int
    train_accuracy: float
    cross_entropy: float
    validation_accuracy: Optional[float]
    validation_count: int
    test_accuracy: Optional[float]
    test_count: int
    test_per_class: dict[str, dict[str, int]]
    misclassified: tuple[tuple[str, str], ...]
    outputs: dict[str, Any]
    seconds: dict[str, float]
    exports: tuple[dict[str, Any], ...] = ()  # the export report, one row per artifact
    best_step: Optional[int] = None
    distorted: Optional[dict[str, Any]] = None
    fine_tuning: Optional[dict[str, Any]] = None
    audit: Optional[dict[str, Any]] = None
    report: Optional[Any] = None
    extractor_precision: str = FLOAT32
    extractor_id: str = ""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings)."""
        document = dataclasses.asdict(dataclasses.replace(self, report=None))
        del document["report"]
        document["labels"] = list(self.labels)
        document["skipped"] = [{"path": path, "reason": reason} for path, reason in self.skipped]
        document["misclassified"] = [
            {"path": path, "predicted": label} for path, label in self.misclassified
        ]
        document["outputs"] = {
            name: [str(path) for path in value] if isinstance(value, list) else str(value)
            for name, value in self.outputs.items()
        }
        if self.report is not None:
            document = self.report.extend_document(document, self.labels)
        return document


def run(config: RetrainConfig) -> RetrainResult:
    """Retrain a classifier on `config.image_dir` and export it.

    Returns:
        RetrainResult with metrics, counts, skipped files and output paths.

    Raises:
        UsageError: bad paths (checked before the long work), unknown extractor.
        DataError: fewer than two classes, no decodable training images.
        ModelError: the extractor cannot be loaded.
        QualityGateError: a gate failed; nothing was exported, the reports were written.
    """
    # Imported here so that reading RetrainConfig (e.g. `retrain --help`) does not load TensorFlow.
    from retrainer.bottlenecks import compute_bottlenecks
    from retrainer.discovery import discover_images
    from retrainer.engines import create_engine
    from retrainer.evaluate import evaluate_head, validation_probabilities
    from retrainer.exports.deployable import check_calibration_supply, verify_exports
    from retrainer.extractors import create_extractor
    from retrainer.reports.gates import failure_message
    from retrainer.reports.held_outputs import HeldOutputs
    from retrainer.reports.metrics_file import build_run_report, report_paths
    from retrainer.reports.writer import write_reports
    from retrainer.training.head import train_head
    from retrainer.training.image_modes import (
        check_fine_tunable,
        distortions_of,
        fine_tune_if_asked,
        fine_tuning_summary,
        training_features,
    )

    timer = _StageTimer()
    check_output_paths(config)  # before the long work
    remove_stale_export_temporaries(config)
    with timer("discover"):
        collection = discover_images(
            config.image_dir, config.validation_percentage, config.testing_percentage
        )
    check_calibration_supply(config, collection)
    with timer("extractor"):
        extractor = create_extractor(config.tfhub_module, config.image_size)
        engine = create_engine(extractor, config.extractor_precision)
    check_fine_tunable(config, extractor)
    with timer("bottlenecks"):
        bottlenecks = compute_bottlenecks(
            [image.path for image in collection.images], engine, config.bottleneck_dir,
            show_progress=config.show_progress,
        )
    audit = None
    if not config.skip_audit:
        from retrainer.audit.run import DatasetAudit

        with timer("audit"):
            audit = DatasetAudit(collection, bottlenecks, config)
        if config.keep_duplicates_in_one_split:
            collection = audit.keep_groups_in_one_split()
    splits = _SplitFeatures(collection, bottlenecks)
    held = HeldOutputs(active=config.has_quality_gates)  # until the gates pass
    exports = _Exports(config, extractor, collection.labels,
                       held.folder(config.intermediate_output_graphs_dir))
    checkpoint = held.folder(config.checkpoint_path.parent) / config.checkpoint_path.name
    with timer("distort", active=distortions_of(config).enabled):
        train_features, distorted = training_features(
            config, extractor, splits.images[TRAINING], splits.features[TRAINING])
    with timer("train"):
        training = train_head(
            train_features, splits.features[VALIDATION], len(collection.labels),
            dataclasses.replace(_training_config(config), checkpoint_path=checkpoint),
            exports.store_intermediate,
            config.intermediate_store_frequency,
        )
    with timer("fine_tune", active=config.do_fine_tuning):
        tuning, test_features = fine_tune_if_asked(
            config, extractor, training.head, splits.images, splits.features)
    with timer("evaluate"):
        evaluation = evaluate_head(
            training.head, test_features, len(collection.labels),
            config.test_batch_size, config.seed,
        )
        validation = validation_probabilities(training.head, splits.features[VALIDATION],
                                              splits.images[VALIDATION], extractor, tuning)
    run_report = build_run_report(config, extractor.spec, training.history, evaluation,
                                  validation, splits)
    gate_failure = failure_message(run_report.gates)
    outputs: dict[str, Any] = {}
    report: list = []
    if gate_failure is None:  # a model that fails a gate replaces no previous export
        with timer("export"):
            outputs = exports.write_final(training.head, splits.images[TRAINING])
            held.release()
            report = verify_exports(config, outputs, splits.images[TESTING],
                                    extractor.spec.input_size)
    else:
        held.discard()
    if audit is not None:
        audit_document = audit.write(evaluation, splits.images[TESTING],
                                     splits.features[TESTING].labels)
        outputs["audit_file"] = config.audit_file
    last = training.history[-1]
    test_images = splits.images[TESTING]
    result = RetrainResult(
        labels=collection.labels,
        counts=splits.counts(),
        skipped=tuple(sorted(collection.ignored + splits.unreadable)),
        bottlenecks_computed=bottlenecks.computed,
        bottlenecks_reused=bottlenecks.reused,
        train_accuracy=last.train_accuracy,
        cross_entropy=last.cross_entropy,
        validation_accuracy=last.validation_accuracy,
        validation_count=last.validation_count,
        test_accuracy=evaluation.accuracy,
        test_count=evaluation.count,
        test_per_class={
            label: {"correct": correct, "total": total}
            for label, (correct, total) in zip(collection.labels, evaluation.per_class)
        },
        misclassified=tuple(
            (test_images[position].relpath, collection.labels[predicted])
            for position, predicted in evaluation.misclassified(splits.features[TESTING].labels)
        ),
        outputs={**outputs, **report_paths(config.metrics_file, config.report_html)},
        seconds=timer.seconds(),
        exports=tuple(row.to_json() for row in report),
        best_step=training.best_step,
        distorted=distorted,
        fine_tuning=fine_tuning_summary(config, tuning),
        audit=None if audit is None else audit_document,
        report=run_report,
        extractor_precision=engine.precision,
        extractor_id=engine.spec.id,
    )
    write_reports(result, config.metrics_file, config.report_html, config.summaries_dir)
    if gate_failure is not None:
        raise QualityGateError(gate_failure)
    return result


class _Exports:
    """Writes a run's exports; the classifier graph is traced once, on first use."""

    def __init__(self, config: RetrainConfig, extractor, labels: tuple[str, ...],
                 intermediate_dir: Path) -> None:
        self.config = config
        self.intermediate_dir = intermediate_dir  # config's, or a staging folder (quality gates)
        self.extractor = extractor
        self.labels = labels
        self.intermediate_graphs: list[Path] = []
        self._exporter = None

    def exporter(self, head):
        from retrainer.exports.classifier import Classifier
        from retrainer.exports.graph import GraphExporter

        if self._exporter is None:
            name = self.config.final_tensor_name
            self._exporter = GraphExporter(Classifier(self.extractor, head, self.labels, name))
        return self._exporter

    def store_intermediate(self, step: int, head) -> None:
        from retrainer.exports.graph import intermediate_graph_path

        path = intermediate_graph_path(self.config.intermediate_output_graphs_dir, step)
        self.exporter(head).write_graph(intermediate_graph_path(self.intermediate_dir, step),
                                        step=step)
        self.intermediate_graphs.append(path)
        log.info("Saved intermediate graph %s", path)

    def write_final(self, head, training_images) -> dict[str, Any]:
        """Labels, graph + sidecar, SavedModel and .tflite if asked; returns {flag name: path}."""
        from retrainer.exports.classifier import write_labels
        from retrainer.exports.deployable import write_tflite_exports
        from retrainer.exports.saved_model import write_saved_model

        config = self.config
        exporter = self.exporter(head)
        write_labels(config.output_labels, self.labels)
        outputs: dict[str, Any] = {
            "output_graph": config.output_graph,
            "output_graph_metadata": exporter.write_graph(config.output_graph),
            "output_labels": config.output_labels,
            "summaries_dir": config.summaries_dir,
            "checkpoint_path": config.checkpoint_path,
        }
        if config.saved_model_dir is not None:
            write_saved_model(exporter.classifier, config.saved_model_dir)
            outputs["saved_model_dir"] = config.saved_model_dir
        outputs.update(write_tflite_exports(config, exporter.classifier, training_images))
        if self.intermediate_graphs:
            outputs["intermediate_graphs"] = list(self.intermediate_graphs)
        return outputs


def _training_config(config: RetrainConfig):
    from retrainer.training.head import TrainingConfig
    from retrainer.training.image_modes import early_stopping_patience_of, regularization_of

    return TrainingConfig(
        steps=config.how_many_training_steps,
        learning_rate=config.learning_rate,
        train_batch_size=config.train_batch_size,
        validation_batch_size=config.validation_batch_size,
        eval_step_interval=config.eval_step_interval,
        seed=config.seed,
        summaries_dir=config.summaries_dir,
        checkpoint_path=config.checkpoint_path,
        regularization=regularization_of(config),
        early_stopping_patience=early_stopping_patience_of(config),
    )


class _SplitFeatures:
    """The decodable images and their vectors, grouped by split."""

    def __init__(self, collection, bottlenecks) -> None:
        import numpy as np

        from retrainer.training.head import FeatureSet

        self.labels = collection.labels
        self.images = {split: [] for split in SPLITS}
        rows = {split: [] for split in SPLITS}
        for position, image in enumerate(collection.images):
            if bottlenecks.ok[position]:
                self.images[image.split].append(image)
                rows[image.split].append(position)
        self.unreadable = tuple(
            (collection.images[position].relpath, reason)
            for position, reason in bottlenecks.skipped
        )
        self.features = {
            split: FeatureSet(
                bottlenecks.vectors[rows[split]],  # float32 [n, D], also when n == 0
                np.array([image.label_index for image in self.images[split]], np.int64),
            )
            for split in SPLITS
        }
        if not self.images[TRAINING]:
            raise DataError(
                f"No decodable training images in {collection.image_dir} "
                f"({len(self.unreadable)} could not be read); add images or lower "
                "--validation_percentage/--testing_percentage."
            )
        trainable = [label for label, row in self.counts().items() if row[TRAINING]]
        if len(trainable) < 2:  # a one-class "classifier" would exit 0 and be useless
            raise DataError(
                f"Only 1 class has decodable training images ({trainable[0]!r}) in "
                f"{collection.image_dir} ({len(self.unreadable)} files could not be read); at "
                "least 2 are needed: add images or lower --validation_percentage/"
                "--testing_percentage."
            )
        for label, row in self.counts().items():
            if row[TRAINING] == 0:
                log.warning("Class %r has no usable training images; it cannot be predicted.",
                            label)

    def counts(self) -> dict[str, dict[str, int]]:
        table = {label: dict.fromkeys(SPLITS, 0) for label in self.labels}
        for split, images in self.images.items():
            for image in images:
                table[self.labels[image.label_index]][split] += 1
        return table


class _StageTimer:
    def __init__(self) -> None:
        self.started = time.perf_counter()
        self._seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str, active: bool = True):
        """Time the block as `stage`; an inactive stage (a mode not asked for) is not listed."""
        started = time.perf_counter()
        try:
            yield
        finally:
            if active:
                self._seconds[stage] = time.perf_counter() - started

    def seconds(self) -> dict[str, float]:
        return {**self._seconds, "total": time.perf_counter() - self.started}
