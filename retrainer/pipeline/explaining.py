"""The report's heat-map section (`reports.explanations`), wired from the run's stages: the test
images the evaluation chose, explained on the graph the export wrote (or would have written, when
a quality gate failed), with the map of the model that made the head's vectors where it is kept.
"""

from __future__ import annotations

from retrainer.config import RetrainConfig
from retrainer.data.split import TESTING
from retrainer.explain.scope import explainable
from retrainer.exports.run import Exporter
from retrainer.formats.extractor_spec import ExtractorSpec
from retrainer.formats.graph_contract import INPUT_OP
from retrainer.pipeline._background import TensorFlowLoad
from retrainer.pipeline.split_features import SplitFeatures
from retrainer.reports.explanations import choose_images, explanation_section
from retrainer.reports.html import Section
from retrainer.training.evaluate import Evaluation
from retrainer.training.head_types import Head


class Explanations:
    """One run's heat-map section: whether it has pictures (`explained`), then the section
    (`section`, after the export)."""

    def __init__(self, config: RetrainConfig, exporter: Exporter, spec: ExtractorSpec,
                 head: Head, evaluation: Evaluation, splits: SplitFeatures,
                 tensorflow: TensorFlowLoad) -> None:
        """`exporter` writes `head`'s graph, trained on `spec`'s vectors of `splits` and
        evaluated (`evaluation`); `tensorflow` is loaded before a map needs it."""
        self._config, self._exporter, self._spec, self._head = config, exporter, spec, head
        self._evaluation, self._splits, self._tensorflow = evaluation, splits, tensorflow
        reports = config.reports
        self._count = reports.report_explanations if reports.report_html is not None else 0
        # whether pictures are made (else a note, or no section: not timed as "explain")
        self.explained = self._count > 0 and explainable(spec.name)

    def section(self) -> list[Section]:
        """The report's heat-map section (none with --report_explanations 0)."""
        if not self._count:
            return []
        exporter, head, spec, splits = self._exporter, self._head, self._spec, self._splits
        chosen = choose_images(splits.images[TESTING], self._evaluation, splits.labels,
                               self._count)
        return [explanation_section(
            lambda: exporter.exported_graph(head), f"{INPUT_OP}:0",
            f"{self._config.exports.final_tensor_name}:0", spec.name, spec.input_size, chosen,
            self._count, self._config.extraction.bottleneck_dir, self._tensorflow.ready,
            exporter.lite_cam(head), exporter.graph_sha256)]
