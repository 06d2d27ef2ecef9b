"""A run's exports: intermediate graphs during training, then labels, graph, SavedModel, TFLite,
ONNX. An export whose converter fails is recorded in `failures` and the others are still written."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from retrainer.errors import ModelError

log = logging.getLogger(__name__)


class RunExports:
    """Writes a run's exports; the classifier graph is traced once, on first use."""

    def __init__(self, config, extractor, labels: tuple[str, ...],
                 intermediate_dir: Path) -> None:
        self.config = config
        self.intermediate_dir = intermediate_dir  # config's, or a staging folder (quality gates)
        self.extractor = extractor
        self.labels = labels
        self.intermediate_graphs: list[Path] = []
        self.failures: list[str] = []  # one line per export that could not be written
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

    def write_final(self, head, training_images, fine_tuned: bool) -> dict[str, Any]:
        """Labels, graph + sidecar, then SavedModel, .tflite and .onnx if asked.

        Returns:
            {flag name: path written}; an ONNX conversion failure leaves its key out and is
            recorded in `failures` (the pipeline raises ExportFailedError once reports are written).
        """
        from retrainer.exports.classifier import write_labels
        from retrainer.exports.deployable import write_onnx_exports, write_tflite_exports
        from retrainer.exports.saved_model import write_saved_model

        config = self.config
        exporter = self.exporter(head)
        exporter.classifier.fine_tuned = fine_tuned
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
        try:
            outputs.update(write_onnx_exports(config, exporter.classifier, training_images))
        except ModelError as error:  # the converter's failure costs no other export
            self.failures.append(str(error))
        if self.intermediate_graphs:
            outputs["intermediate_graphs"] = list(self.intermediate_graphs)
        return outputs
