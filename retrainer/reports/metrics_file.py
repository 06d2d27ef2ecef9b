"""The run's metrics document: `--metrics_file` (default retrain_output/metrics.json) and `--json`.

`RunReport` is what the reporting stage adds to a `RetrainResult`: the training history, the test
and whole-validation metrics, the misclassified test images with scores, the extractor, the flags
and the gates. `extend_document` merges it into `RetrainResult.to_json()`'s keys, so the file and
`--json` are one document; its schema is docs/reports.md (bump FORMAT on incompatible changes).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from retrainer.data.split import TESTING, VALIDATION
from retrainer.io.atomic import write_text_atomically
from retrainer.reports.gates import GateResult, check_gates
from retrainer.reports.metrics import SplitMetrics, split_metrics

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
class RunReport:
    """Metrics and context of one run, beyond retrain.py's figures.

    Attributes:
        history: retrainer.training.head.EvalPoint per evaluation step.
        test: metrics over the final test's predictions (the whole test split by default).
        validation: metrics over the whole validation split, each image once.
        misclassified: the wrong test predictions, in RetrainResult.misclassified's order.
        extractor: {"name", "id", "input_size": [H, W], "vector_size"}.
        flags: the RetrainConfig, JSON-ready.
        gates: the quality gates asked for and their outcome.
        multi_label: a multi-label run's thresholds and metrics (training.multi_label), else None.
            `test`/`validation` then score the top-1 label as right when it is one of the image's
            labels, and `misclassified` lists the test images whose predicted label set differs.
    """

    history: tuple[Any, ...]
    test: SplitMetrics
    validation: SplitMetrics
    misclassified: tuple[MisclassifiedImage, ...]
    extractor: dict[str, Any]
    flags: dict[str, Any]
    gates: tuple[GateResult, ...]
    multi_label: Optional[Any] = None

    def headline(self) -> tuple[Optional[str], SplitMetrics]:
        """(split name, metrics) that gates and pictures use: test, else validation.

        The name is None when neither split has images.
        """
        return headline_split(self.test, self.validation)

    def extend_document(self, document: dict[str, Any], labels: tuple[str, ...]) -> dict[str, Any]:
        """`RetrainResult.to_json()`'s keys (kept) plus this report's; "format" first."""
        return {
            "format": FORMAT,
            **document,
            "misclassified": [
                {"path": image.relpath, "predicted": image.predicted_label,
                 "true": image.true_label, "score": image.score}
                for image in self.misclassified
            ],
            "metrics": {TESTING: self.test.to_json(labels),
                        VALIDATION: self.validation.to_json(labels)},
            "history": [dataclasses.asdict(point) for point in self.history],
            "extractor": self.extractor,
            "flags": self.flags,
            "quality_gates": [gate.to_json() for gate in self.gates],
            **({} if self.multi_label is None
               else {"multi_label": self.multi_label.to_json(labels)}),
        }


def build_run_report(config: Any, spec: Any, history: tuple[Any, ...], evaluation: Any,
                     validation_probabilities: np.ndarray, splits: Any,
                     multi_label: Optional[Any] = None) -> RunReport:
    """Compute the metrics and check the gates.

    Args:
        config: the RetrainConfig.
        spec: the extractor's ExtractorSpec.
        history: the training history (EvalPoint per evaluation step).
        evaluation: retrainer.training.evaluate.Evaluation of the test split.
        validation_probabilities: float32 [N_val, C] over the whole validation split.
        splits: the pipeline's split features: `.labels`, `.images[split]` (ImageFile lists) and
            `.features[split]` (FeatureSet).
        multi_label: training.multi_label.MultiLabelEvaluation of a multi-label run.

    Returns:
        RunReport.
    """
    labels = splits.labels
    test_truth = splits.features[TESTING].labels[evaluation.positions]
    validation_truth = splits.features[VALIDATION].labels
    if multi_label is not None:
        return _multi_label_report(config, spec, history, evaluation, validation_probabilities,
                                   splits, multi_label)
    test = split_metrics(test_truth, evaluation.probabilities, evaluation.positions)
    validation = split_metrics(validation_truth, validation_probabilities)
    wrong = np.flatnonzero(evaluation.predictions != test_truth)
    misclassified = tuple(
        MisclassifiedImage(
            relpath=splits.images[TESTING][evaluation.positions[row]].relpath,
            path=splits.images[TESTING][evaluation.positions[row]].path,
            true_label=labels[test_truth[row]],
            predicted_label=labels[evaluation.predictions[row]],
            score=float(evaluation.probabilities[row, evaluation.predictions[row]]),
        )
        for row in wrong
    )
    gates = check_gates(config.assert_accuracy_at_least, config.assert_recall_at_least,
                        *headline_split(test, validation), labels)
    extractor = {"name": spec.name, "id": spec.id, "input_size": list(spec.input_size),
                 "vector_size": spec.vector_size}
    return RunReport(tuple(history), test, validation, misclassified, extractor,
                     flags_json(config), gates)


def _multi_label_report(config: Any, spec: Any, history: tuple[Any, ...], evaluation: Any,
                        validation_probabilities: np.ndarray, splits: Any,
                        multi_label: Any) -> RunReport:
    """`build_run_report` for a multi-label run (see RunReport.multi_label)."""
    from retrainer.training.multi_label import targets_of

    labels = splits.labels
    test_images = [splits.images[TESTING][position] for position in evaluation.positions]
    test_targets = targets_of(test_images, len(labels))
    test = split_metrics(_best_true_label(test_targets, evaluation.probabilities),
                         evaluation.probabilities, evaluation.positions)
    validation_targets = targets_of(splits.images[VALIDATION], len(labels))
    validation = split_metrics(_best_true_label(validation_targets, validation_probabilities),
                               validation_probabilities)
    predicted = evaluation.probabilities >= multi_label.thresholds
    misclassified = tuple(
        MisclassifiedImage(
            relpath=image.relpath, path=image.path,
            true_label=";".join(labels[c] for c in np.flatnonzero(test_targets[row])),
            predicted_label=";".join(labels[c] for c in np.flatnonzero(predicted[row])),
            score=float(evaluation.probabilities[row].max()),
        )
        for row, image in enumerate(test_images)
        if not np.array_equal(predicted[row], test_targets[row] > 0.5)
    )
    name, headline = headline_split(test, validation)
    gates = check_gates(config.assert_accuracy_at_least, config.assert_recall_at_least,
                        name, headline, labels,
                        multi_label.test if name == TESTING else multi_label.validation)
    extractor = {"name": spec.name, "id": spec.id, "input_size": list(spec.input_size),
                 "vector_size": spec.vector_size}
    return RunReport(tuple(history), test, validation, misclassified, extractor,
                     flags_json(config), gates, multi_label)


def _best_true_label(targets: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """int64 [N]: each image's true label with the highest probability (so "accuracy" is the share
    of images whose top-1 prediction is one of their labels)."""
    if not len(targets):
        return np.zeros(0, np.int64)
    return np.argmax(np.where(targets > 0.5, probabilities, -1.0), axis=1).astype(np.int64)


def headline_split(test: SplitMetrics, validation: SplitMetrics
                   ) -> tuple[Optional[str], SplitMetrics]:
    """("testing", test) unless the test split is empty, then ("validation", validation)."""
    if test.count:
        return TESTING, test
    return (VALIDATION if validation.count else None), validation


def flags_json(config: Any) -> dict[str, Any]:
    """The config's fields, paths as strings."""
    return {name: os.fspath(value) if isinstance(value, os.PathLike) else value
            for name, value in dataclasses.asdict(config).items()}


def write_metrics_file(path: Path, document: dict[str, Any]) -> None:
    """Write the document atomically, indented, UTF-8."""
    write_text_atomically(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def report_paths(metrics_file: Optional[Path], report_html: Optional[Path]) -> dict[str, Path]:
    """{output name: path} of the report files a run writes (the PNGs go next to the report)."""
    paths = {}
    if metrics_file is not None:
        paths["metrics_file"] = metrics_file
    if report_html is not None:
        paths["report_html"] = report_html
        paths["training_curves"] = report_html.parent / "training_curves.png"
        paths["confusion_matrix"] = report_html.parent / "confusion_matrix.png"
    return paths
