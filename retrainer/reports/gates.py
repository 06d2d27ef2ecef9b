"""Quality gates for CI: `--assert_accuracy_at_least` and `--assert_recall_at_least`.

Measured on the test split, or on the whole validation split when there is no test image. For a
multi-label model, "accuracy" is the micro-F1 and recall is each label's at its threshold. A gate
that cannot be measured (no test or validation image) fails: CI must not pass a model nobody
measured. The pipeline checks the gates before exporting, so a failing model replaces nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

from retrainer.data.split import TESTING
from retrainer.reports.metrics import SplitMetrics
from retrainer.reports.multi_label import MultiLabelMetrics


@dataclasses.dataclass(frozen=True)
class GateResult:
    """One gate's outcome.

    Attributes:
        flag: the flag, e.g. "assert_accuracy_at_least".
        threshold: the fraction asked for.
        value: the fraction reached (the worst class's recall for the recall gate); None when
            it could not be measured.
        split: "testing" or "validation" (None when neither has images).
        count: the images measured in that split.
        label: for the recall gate, the class with the lowest recall.
        metric: what `value` is: "accuracy", "micro_f1" (multi-label accuracy gate) or "recall".
    """

    flag: str
    threshold: float
    value: Optional[float]
    split: Optional[str]
    count: int = 0
    label: Optional[str] = None
    metric: str = "accuracy"

    @property
    def passed(self) -> bool:
        return self.value is not None and self.value >= self.threshold

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "passed": self.passed}

    def message(self) -> str:
        """The one-line reason for a failed gate."""
        if self.value is None:
            return (f"--{self.flag} {self.threshold:g} cannot be checked: there are no test or "
                    "validation images. Add images or raise --testing_percentage.")
        what = ("micro-F1" if self.metric == "micro_f1" else "accuracy") if self.label is None \
            else f"recall of class {self.label!r}"
        split = "test" if self.split == TESTING else "validation"
        return (f"{what} {self.value * 100:.2f}% on the {split} split (N={self.count}) is "
                f"below --{self.flag} {self.threshold:g} ({self.threshold * 100:.2f}%); the "
                "previous exports were left untouched (see the metrics file and report).")


def check_gates(
    accuracy_at_least: Optional[float],
    recall_at_least: Optional[float],
    split: Optional[str],
    metrics: SplitMetrics,
    labels: tuple[str, ...],
    multi_label: Optional[MultiLabelMetrics] = None,
) -> tuple[GateResult, ...]:
    """Measure each gate asked for (None = not asked).

    Args:
        accuracy_at_least: minimum accuracy, a fraction in [0, 1].
        recall_at_least: minimum recall of every class with examples in the measured split.
        split: the split measured ("testing" or "validation"), None when both are empty.
        metrics: that split's metrics.
        labels: class names in index order.
        multi_label: that split's multi-label metrics, for a multi-label model (then the accuracy
            gate reads the micro-F1 and the recall gate each label's recall at its threshold).

    Returns:
        One GateResult per gate asked for.
    """
    results = []
    rows: Sequence[Any] = metrics.per_class if multi_label is None else multi_label.per_class
    if accuracy_at_least is not None:
        value = metrics.accuracy if multi_label is None else multi_label.micro_f1
        results.append(GateResult("assert_accuracy_at_least", accuracy_at_least,
                                  value if split else None, split, metrics.count,
                                  metric="accuracy" if multi_label is None else "micro_f1"))
    if recall_at_least is not None:
        recalls = [(row.recall, label) for label, row in zip(labels, rows)
                   if row.recall is not None] if split else []
        worst, label = min(recalls, key=lambda pair: pair[0]) if recalls else (None, None)
        results.append(GateResult("assert_recall_at_least", recall_at_least, worst, split,
                                  metrics.count, label, metric="recall"))
    return tuple(results)


def failure_message(results: tuple[GateResult, ...]) -> Optional[str]:
    """The `Error:` text for the first failed gate (and how many more failed), else None."""
    failed = [result for result in results if not result.passed]
    if not failed:
        return None
    more = f" ({len(failed) - 1} more gate failed)" if len(failed) > 1 else ""
    return failed[0].message() + more
