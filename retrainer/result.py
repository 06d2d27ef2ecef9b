"""What a retrain run did and produced: `RetrainResult`, whose `to_json()` is `--json`."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from retrainer.engines import FLOAT32


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
        report: per-class metrics, confusion matrices, history, gates (retrainer.reports).
        extractor_precision, extractor_id: how the bottlenecks were computed; the id names their
            cache namespace; extraction_devices: the TensorFlow devices that computed them.
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
    head: Optional[dict[str, Any]] = None
    search: Optional[dict[str, Any]] = None
    distorted: Optional[dict[str, Any]] = None
    fine_tuning: Optional[dict[str, Any]] = None
    audit: Optional[dict[str, Any]] = None
    report: Optional[Any] = None
    extractor_precision: str = FLOAT32
    extractor_id: str = ""
    extraction_devices: tuple[str, ...] = ()

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
