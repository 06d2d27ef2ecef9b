"""The export report: every artifact run on the whole test split, compared with the frozen graph.

Each artifact is loaded by label-image's own loaders (`retrainer.classify.run.open_model`) and fed the
same decoded test pixels, so the report measures what users will run. Per artifact: file size,
test accuracy, change against the frozen graph in points, top-1 agreement with it and the largest
difference of any class probability. For a multi-label model "accuracy" is the micro-F1 at the
run's thresholds (macro-F1 and mean average precision beside it) and agreement counts equal
(image, label) decisions. `retrainer.exports.run.Exported` turns a loss over
`--max_export_accuracy_drop` points into the run's failure (exit 7).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional, Sequence

import numpy as np

from retrainer.classify.config import ClassifyConfig
from retrainer.errors import ModelError
from retrainer.io.storage import AnyPath, tree_size
from retrainer.reports.multi_label import multi_label_metrics

log = logging.getLogger(__name__)

FROZEN_GRAPH = "frozen graph"
_BATCH = 32


@dataclasses.dataclass(frozen=True)
class ArtifactReport:
    """One artifact's row of the export report.

    Attributes:
        artifact: "frozen graph", "tflite none|dynamic|float16|int8", "saved_model", "onnx" or
            "onnx int8".
        path: the file or folder.
        size_bytes: its size on disk (a folder: all its files).
        accuracy: test accuracy in [0, 1].
        change_points: accuracy minus the frozen graph's, in percentage points.
        agreement: fraction of test images whose top-1 equals the frozen graph's.
        max_probability_difference: largest |p - p_frozen| over images and classes.
        metric: "accuracy", or "micro_f1" for a multi-label model (then `accuracy` holds it).
        macro_f1, mean_average_precision: a multi-label model's, else None.
    """

    artifact: str
    path: AnyPath
    size_bytes: int
    accuracy: float
    change_points: float
    agreement: float
    max_probability_difference: float
    metric: str = "accuracy"
    macro_f1: Optional[float] = None
    mean_average_precision: Optional[float] = None

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "path": str(self.path)}


def export_report(
    artifacts: Sequence[tuple[str, AnyPath]], pixels: np.ndarray, labels: np.ndarray,
    thresholds: Optional[np.ndarray] = None, trust_model: bool = False,
) -> list[ArtifactReport]:
    """Run every artifact on the test pixels and compare each with the first (the frozen graph).

    Args:
        artifacts: (name, path) pairs; the first is the reference.
        pixels: uint8 [N, H, W, 3] test images, decoded as training decodes them; N >= 1.
        labels: int64 [N] true classes, or for a multi-label model float32 [N, C] 0/1 targets.
        thresholds: a multi-label model's float32 [C] thresholds (None: single-label).
        trust_model: open the artifacts without `retrainer.security` checks (--trust_model: they
            carry the ops of an extractor the user trusted).

    Returns:
        One ArtifactReport per artifact, in order.
    """
    reference = None
    reports: list[ArtifactReport] = []
    for name, path in artifacts:
        probabilities = _run(path, pixels, trust_model)
        if reference is None:
            reference = probabilities
        if thresholds is None:
            figures: dict[str, Any] = {
                "accuracy": float((probabilities.argmax(1) == labels).mean())}
            agreement = float((probabilities.argmax(1) == reference.argmax(1)).mean())
        else:
            measured = multi_label_metrics(labels, probabilities, thresholds)
            figures = {"accuracy": measured.micro_f1 or 0.0, "metric": "micro_f1",
                       "macro_f1": measured.macro_f1,
                       "mean_average_precision": measured.mean_average_precision}
            agreement = float(((probabilities >= thresholds) == (reference >= thresholds)).mean())
        accuracy = figures["accuracy"]
        reports.append(ArtifactReport(
            artifact=name,
            path=path,
            size_bytes=tree_size(path),
            change_points=0.0 if not reports else (accuracy - reports[0].accuracy) * 100,
            agreement=agreement,
            max_probability_difference=float(np.abs(probabilities - reference).max()),
            **figures,
        ))
        log.info("%s: test %s %.1f%%, %d bytes", name, reports[-1].metric.replace("_", "-"),
                 accuracy * 100, reports[-1].size_bytes)
    return reports


def _run(path: AnyPath, pixels: np.ndarray, trust_model: bool) -> np.ndarray:
    from retrainer.classify.run import open_model  # loads TensorFlow: only when verifying

    model = open_model(ClassifyConfig(graph=path, trust_model=trust_model))
    size = tuple(pixels.shape[1:3])
    if model.spec.input_size != size:
        model.close()
        raise ModelError(
            f"{model.kind} {path} takes {model.spec.input_size[0]}x{model.spec.input_size[1]} "
            f"images, but the extractor (and the frozen graph) take {size[0]}x{size[1]}; it was "
            "exported from another extractor or --image_size: export it again from this run"
        )
    try:
        return np.concatenate([model.outputs(pixels[start:start + _BATCH])[0]
                               for start in range(0, len(pixels), _BATCH)])
    finally:
        model.close()

