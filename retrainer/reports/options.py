"""What the reporting stage writes and checks: `RetrainConfig.reports`, checked when built.

Free of TensorFlow, so that the config (and `retrain --help`) can build it.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from retrainer.errors import UsageError, require
from retrainer.io.storage import AnyPath


@dataclasses.dataclass(frozen=True)
class ReportOptions:
    """The metrics file, the HTML report (None: not written) and the quality gates (None: off).

    Raises:
        UsageError: on construction, naming the flag.
    """

    metrics_file: Optional[AnyPath]
    report_html: Optional[AnyPath]
    summaries_dir: AnyPath  # TensorBoard: the confusion matrix goes to its test/ run
    assert_accuracy_at_least: Optional[float]
    assert_recall_at_least: Optional[float]
    report_explanations: int  # heat maps of N correct test images per class (+ the wrong ones)

    def __post_init__(self) -> None:
        require("report_explanations", self.report_explanations, self.report_explanations >= 0,
                "0 (none) or more")
        for flag in ("assert_accuracy_at_least", "assert_recall_at_least"):
            value = getattr(self, flag)
            require(flag, value, value is None or 0 <= value <= 1, "a fraction from 0 to 1")
        if self.metrics_file is not None and self.metrics_file == self.report_html:
            raise UsageError(f"--metrics_file and --report_html are the same file: "
                             f"{self.metrics_file}")

    @property
    def has_quality_gates(self) -> bool:
        return self.assert_accuracy_at_least is not None or self.assert_recall_at_least is not None

    @property
    def paths(self) -> dict[str, AnyPath]:
        """{output name: path} of the report files a run writes (the PNGs go next to the HTML)."""
        paths: dict[str, AnyPath] = {}
        if self.metrics_file is not None:
            paths["metrics_file"] = self.metrics_file
        if self.report_html is not None:
            paths["report_html"] = self.report_html
            paths["training_curves"] = self.report_html.parent / "training_curves.png"
            paths["confusion_matrix"] = self.report_html.parent / "confusion_matrix.png"
        return paths
