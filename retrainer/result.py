"""What a retrain run did and produced: `RetrainResult`, the one result document.

`to_json()` is both `--json` and the `--metrics_file` document (schema: docs/reports.md; bump
`FORMAT` on incompatible changes). The pipeline builds it once, at the end of a run
(`retrainer.pipeline`); the summary, the metrics file and the HTML report all read it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

from retrainer.data.split import SPLITS, TESTING, VALIDATION
from retrainer.reports.gates import GateResult
from retrainer.reports.metrics import SplitMetrics

FORMAT = "retrainer-metrics/1"


@dataclasses.dataclass(frozen=True)
class MisclassifiedImage:
    """A wrong test prediction: the file, its true and predicted labels, the predicted score."""

    relpath: str
    path: Path
    true_label: str
    predicted_label: str
    score: float


@dataclasses.dataclass(frozen=True)
class RetrainResult:
    """What a run did and produced.

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
        misclassified: each wrong test prediction, in the test's order.
        outputs: {flag name: path written}, plus "intermediate_graphs": [paths].
        seconds: wall time of every part of the run and "total" (their sum): "start-up" (the
            interpreter and the CLI's imports), "import" (what loading TensorFlow added), each
            stage, "reports", "other" (between the parts) and, from the CLI, "exit"; the total
            is then the process's wall time (docs/performance.md). The metrics file, written
            last, has the figures as they were just before it was written.
        peak_memory_gib: each part's peak resident memory, and "total": the run's peak.
        exports: the export report, one row per artifact (docs/exports.md).
        best_step: the head training step kept by --early_stopping (None without it).
        head: how the head was trained: {"solver": "lbfgs" | "sgd", and for lbfgs "l2" (the
            chosen penalty) and "path": [{"l2", "iterations", "train_accuracy",
            "train_cross_entropy", "validation_accuracy", "validation_cross_entropy",
            "seconds"}]}.
        search: what --search tried: {"chosen": name, "candidates": [{"name", "settings",
            "validation_accuracy", "validation_cross_entropy", "seconds", "status"}]}.
        distorted: {"variants", "computed", "reused", "seconds"} of the distorted training
            vectors (None without distortion flags).
        fine_tuning: what --do_fine_tuning did (None without it); see docs/training.md.
        audit: the audit.json document (docs/audit.md), None with --skip_audit.
        tta: what --tta auto measured (training/tta.py TtaChoice: "mode", "images",
            "plain_accuracy", "flip_accuracy", "standard_error"); None with --tta none or flip.
        extractor_precision, extractor_id: how the bottlenecks were computed; the id names their
            cache namespace; extraction_devices: the TensorFlow devices that computed them.
        history: the training history, one point per evaluation step.
        test_metrics: metrics over the final test's predictions (the whole test split by
            default); validation_metrics: over the whole validation split, each image once.
        extractor: {"name", "id", "input_size": [H, W], "vector_size"}.
        flags: the RetrainConfig, JSON-ready.
        quality_gates: the gates asked for and their outcome.
        novelty: the novelty score's method, threshold and calibration, and the share of test
            images that pass it ("test_pass_rate"; None without test images).
        multi_label: a multi-label run's thresholds and metrics (pipeline.multi_label), else
            None. `test_metrics`/`validation_metrics` then score the top-1 label as right when it
            is one of the image's labels, `misclassified` lists the test images whose predicted
            label set differs (labels joined by ";"), `counts` counts an image once per label
            and `test_per_class` is, per label, {"correct": test images with the label that got
            it (at its threshold), "total": test images with the label}.
        split_sizes: {split: decodable images} (each image once, whatever its labels).
    """

    labels: tuple[str, ...]
    counts: dict[str, dict[str, int]]
    skipped: tuple[tuple[str, str], ...]
    bottlenecks_computed: int
    bottlenecks_reused: int
    train_accuracy: Optional[float]
    cross_entropy: Optional[float]
    validation_accuracy: Optional[float]
    validation_count: int
    test_accuracy: Optional[float]
    test_count: int
    test_per_class: dict[str, dict[str, int]]
    misclassified: tuple[MisclassifiedImage, ...]
    outputs: dict[str, Any]
    seconds: dict[str, float]
    peak_memory_gib: dict[str, float]
    exports: tuple[dict[str, Any], ...]
    best_step: Optional[int]
    head: Optional[dict[str, Any]]
    search: Optional[dict[str, Any]]
    distorted: Optional[dict[str, Any]]
    fine_tuning: Optional[dict[str, Any]]
    audit: Optional[dict[str, Any]]
    extractor_precision: str
    extractor_id: str
    extraction_devices: tuple[str, ...]
    history: tuple[Any, ...]
    test_metrics: SplitMetrics
    validation_metrics: SplitMetrics
    extractor: dict[str, Any]
    flags: dict[str, Any]
    quality_gates: tuple[GateResult, ...]
    novelty: Optional[dict[str, Any]] = None
    multi_label: Optional[Any] = None
    split_sizes: Optional[dict[str, int]] = None
    tta: Optional[dict[str, Any]] = None

    def images_per_split(self) -> dict[str, int]:
        """{split: decodable images}: `split_sizes`, else the sum of `counts` (the same when each
        image has one label; a multi-label image counts once per label in `counts`)."""
        if self.split_sizes is not None:
            return dict(self.split_sizes)
        return {split: sum(row[split] for row in self.counts.values()) for split in SPLITS}

    def headline(self) -> tuple[Optional[str], SplitMetrics]:
        """(split name, metrics) that gates and pictures use: test, else validation.

        The name is None when neither split has images.
        """
        return headline_split(self.test_metrics, self.validation_metrics)

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready document (paths as strings)."""
        return {
            "format": FORMAT,
            "labels": list(self.labels),
            "counts": self.counts,
            "split_sizes": self.images_per_split(),
            "skipped": [{"path": path, "reason": reason} for path, reason in self.skipped],
            "bottlenecks_computed": self.bottlenecks_computed,
            "bottlenecks_reused": self.bottlenecks_reused,
            "train_accuracy": self.train_accuracy,
            "cross_entropy": self.cross_entropy,
            "validation_accuracy": self.validation_accuracy,
            "validation_count": self.validation_count,
            "test_accuracy": self.test_accuracy,
            "test_count": self.test_count,
            "test_per_class": self.test_per_class,
            "misclassified": [
                {"path": image.relpath, "predicted": image.predicted_label,
                 "true": image.true_label, "score": image.score}
                for image in self.misclassified
            ],
            "outputs": {
                name: [str(path) for path in value] if isinstance(value, list) else str(value)
                for name, value in self.outputs.items()
            },
            "seconds": self.seconds,
            "peak_memory_gib": self.peak_memory_gib,
            "exports": self.exports,
            "best_step": self.best_step,
            "head": self.head,
            "search": self.search,
            "distorted": self.distorted,
            "fine_tuning": self.fine_tuning,
            "audit": self.audit,
            "extractor_precision": self.extractor_precision,
            "extractor_id": self.extractor_id,
            "extraction_devices": self.extraction_devices,
            "metrics": {TESTING: self.test_metrics.to_json(self.labels),
                        VALIDATION: self.validation_metrics.to_json(self.labels)},
            "history": [dataclasses.asdict(point) for point in self.history],
            "extractor": self.extractor,
            "flags": self.flags,
            "quality_gates": [gate.to_json() for gate in self.quality_gates],
            "novelty": self.novelty,
            "tta": self.tta,
            **({} if self.multi_label is None
               else {"multi_label": self.multi_label.to_json(self.labels)}),
        }


def headline_split(test: SplitMetrics, validation: SplitMetrics
                   ) -> tuple[Optional[str], SplitMetrics]:
    """("testing", test) unless the test split is empty, then ("validation", validation)."""
    if test.count:
        return TESTING, test
    return (VALIDATION if validation.count else None), validation
