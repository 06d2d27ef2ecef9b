"""The report's heat-map section (`reports.explanations`), wired around the export.

The figures need the evaluation's choice of test images and the head's weights, not the exported
graph, when CAM's map comes from a kept LiteRT model (`explain.lite_cam`: the int8 engine's own
model by default): the graph's SHA-256 only names them in the cache under --bottleneck_dir. So when
that graph is new to --bottleneck_dir (nothing made of it can be kept there yet), they are made on
the stages' background thread (`pipeline.ahead`) while the main thread writes the exports; both
are mostly outside the interpreter lock (LiteRT, PIL's resizing and encoding, hashing, file
writes), which run one after the other on one core each. The timer's "explain" is then the part
of that work the run waited for, and keeping the figures. A graph the cache has seen (a rerun:
its figures are read back), a fine-tuned extractor, a map TensorFlow must compute, or a failed
quality gate (nothing exported): the figures are made after the export, on the main thread.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Optional

import numpy as np

from retrainer.config import RetrainConfig
from retrainer.data.split import TESTING
from retrainer.explain.scope import explainable
from retrainer.exports.run import Exporter
from retrainer.formats.extractor_spec import ExtractorSpec
from retrainer.formats.graph_contract import INPUT_OP
from retrainer.pipeline._background import TensorFlowLoad
from retrainer.pipeline.ahead import Ahead
from retrainer.pipeline.split_features import SplitFeatures
from retrainer.reports.explanations import (
    Figures,
    choose_images,
    explanation_section,
    lite_figures,
)
from retrainer.reports.html import Section
from retrainer.training.evaluate import Evaluation
from retrainer.training.head_types import Head
from retrainer.training.novelty import Novelty


class Explanations:
    """One run's heat-map section: its images chosen once the head is evaluated, its figures
    made beside the export (`start`) or after it (`section`)."""

    def __init__(self, config: RetrainConfig, exporter: Exporter, spec: ExtractorSpec,
                 head: Head, evaluation: Evaluation, splits: SplitFeatures,
                 tensorflow: TensorFlowLoad) -> None:
        """`exporter` writes `head`'s graph, trained on `spec`'s vectors of `splits` and
        evaluated (`evaluation`); `tensorflow` is loaded before a map needs it."""
        self._config, self._exporter, self._spec, self._head = config, exporter, spec, head
        self._tensorflow = tensorflow
        reports = config.reports
        self._count = reports.report_explanations if reports.report_html is not None else 0
        # whether pictures are made (else a note, or no section: not timed as "explain")
        self.explained = self._count > 0 and explainable(spec.name)
        self._chosen = (choose_images(splits.images[TESTING], evaluation, splits.labels,
                                      self._count) if self._count else [])
        self._figures: Optional[Future[Optional[Figures]]] = None

    def start(self, ahead: Ahead, fine_tuned: bool, novelty: Optional[Novelty],
              thresholds: Optional[np.ndarray]) -> None:
        """Make the figures on `ahead` now, when the graph about to be exported (of these
        values: `Exporter.write_all`'s) is new to the cache and explained by a kept map model;
        else nothing is started."""
        lite = self._exporter.lite_cam(self._head, fine_tuned)
        if (self.explained and self._chosen and lite is not None and lite.kept()
                and self._exporter.graph_is_new(self._head, novelty, thresholds)):
            self._figures = ahead.pool.submit(lite_figures, self._chosen,
                                              self._spec.input_size, lite, ahead.stopping)

    def section(self) -> list[Section]:
        """The report's heat-map section, after the export (none with --report_explanations
        0): the figures started ahead are waited for (their error, if any, raised here)."""
        if not self._count:
            return []
        exporter, head, spec = self._exporter, self._head, self._spec
        return [explanation_section(
            lambda: exporter.exported_graph(head), f"{INPUT_OP}:0",
            f"{self._config.exports.final_tensor_name}:0", spec.name, spec.input_size,
            self._chosen, self._count, self._config.extraction.bottleneck_dir,
            self._tensorflow.ready, exporter.lite_cam(head), exporter.graph_sha256,
            None if self._figures is None else self._figures.result)]
