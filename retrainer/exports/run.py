"""The export stage: intermediate graphs during training, then every artifact, then its report.

`Exporter` is built once per run. Training calls `write_intermediate` every
--intermediate_store_frequency steps; `write_all` then writes the labels, the frozen graph with its
sidecar, the SavedModel, the .tflite and the .onnx files asked for, and runs each deployable
artifact on the test split against the frozen graph (the export report, docs/exports.md). A TFLite
or ONNX conversion that fails is recorded in `Exported.failures`; every other export is still
written. The
classifier graph is traced once, on first use.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np

from retrainer.data.batches import decode_files
from retrainer.data.collection import ImageFile
from retrainer.errors import ModelError
from retrainer.explain.lite_cam import LiteCam
from retrainer.exports.kept import (
    GraphTemplates,
    KeptGraphs,
    classifier_metadata,
    frozen_graph_key,
    write_sidecar,
)
from retrainer.exports.options import AUTO_TTA, NO_TTA, ExportOptions
from retrainer.exports.verify import FROZEN_GRAPH, ArtifactReport, export_report
from retrainer.formats.extractor_spec import ExtractorSpec
from retrainer.formats.graph_contract import graph_sha256, write_labels
from retrainer.io.atomic import write_bytes_atomically
from retrainer.io.storage import AnyPath
from retrainer.training.head_types import Head
from retrainer.training.multi_label import targets_of
from retrainer.training.novelty import Novelty

if TYPE_CHECKING:  # their modules load TensorFlow: only a graph to trace or convert needs it
    from retrainer.exports.classifier import Classifier
    from retrainer.exports.graph import GraphExporter
    from retrainer.extractors import FeatureExtractor

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Exported:
    """What `write_all` wrote: {output name: path (or paths)}, the export report's rows, and one
    line per export that could not be written."""

    outputs: dict[str, Any]
    report: tuple[ArtifactReport, ...] = ()
    failures: tuple[str, ...] = ()

    def accuracy_drop_failure(self, max_drop_points: Optional[float]) -> Optional[str]:
        """The --max_export_accuracy_drop failure message, or None (also without the flag)."""
        if max_drop_points is None or not self.report:
            return None
        over = [row for row in self.report[1:] if -row.change_points > max_drop_points]
        if not over:
            return None
        details = ", ".join(f"{row.artifact} ({row.path}) {row.change_points:+.1f}" for row in over)
        metric = "micro-F1" if self.report[0].metric == "micro_f1" else "accuracy"
        return (f"exports lost more than --max_export_accuracy_drop {max_drop_points:g} points of "
                f"test {metric} against the frozen graph ({self.report[0].accuracy * 100:.1f}%): "
                f"{details}. Use a milder --tflite_quantization (float16 or dynamic), "
                "--onnx_quantization none, or more calibration images "
                "(--tflite_calibration_images); the files were written.")


class Exporter:
    """Writes one run's exports (see the module docstring)."""

    def __init__(self, options: ExportOptions, spec: ExtractorSpec,
                 extractor: Callable[[], FeatureExtractor], labels: tuple[str, ...],
                 intermediate_dir: AnyPath, cache_root: Optional[AnyPath] = None,
                 load_tensorflow: Callable[[], None] = lambda: None) -> None:
        """`spec`: the extractor's; `extractor()`: builds it (TensorFlow), for a graph to trace;
        `intermediate_dir`: the options' folder, or a staging folder (quality gates);
        `cache_root`: --bottleneck_dir, where the exported graph's inputs are remembered (a
        rerun whose graph would be the same keeps it untraced, without TensorFlow:
        `exports.kept`); `load_tensorflow()` is called before anything needs TensorFlow."""
        self.options = options
        self.cache_root = cache_root
        self.spec = spec
        self._extractor = extractor
        self._load_tensorflow = load_tensorflow
        self.labels = labels
        self.intermediate_dir = intermediate_dir
        # --tta auto starts without; the pipeline sets the measured choice before write_all
        self.tta = NO_TTA if options.tta == AUTO_TTA else options.tta
        self.intermediate_graphs: list[AnyPath] = []
        self._exporter: Optional[GraphExporter] = None
        self._kept_graph: Optional[bytes] = None  # the exported graph, when kept untraced
        self._kept_sha256 = ""  # its SHA-256 (hex), when kept
        self._fine_tuned: Optional[bool] = None  # known once write_all ran
        # the int8 engine's kept model that made the head's vectors: the heat maps' map
        self.engine_model: Optional[Path] = None

    def graph_exporter(self, head: Head) -> GraphExporter:
        """The frozen-graph writer of `head`: the intermediate graphs' until `write_all`, the
        exported graph's after it."""
        if self._exporter is None:
            self._exporter = self._graph_exporter(head)
        self._exporter.classifier.head.assign(head)  # the graph follows the head's values
        return self._exporter

    def exported_graph(self, head: Head) -> bytes:
        """The exported frozen graph's bytes (what the report's heat maps explain)."""
        if self._kept_graph is not None:
            return self._kept_graph
        return self.graph_exporter(head).frozen_graph_bytes()

    def graph_sha256(self, graph: bytes) -> str:
        """The SHA-256 (hex) of `graph` (`exported_graph`'s bytes): the one `write_all` kept is
        not hashed again (its sidecar holds it; the heat maps' keys name it)."""
        return self._kept_sha256 if graph is self._kept_graph else graph_sha256(graph)

    def needs_tensorflow(self, head: Head, novelty: Optional[Novelty], fine_tuned: bool,
                         explained: bool) -> bool:
        """Whether `write_all` (and, when `explained`, the report's heat maps) will likely need
        TensorFlow: a fine-tuned extractor, or no kept template of the graph (or map model)."""
        if fine_tuned or not self._templates(head, novelty).kept():
            return True
        return explained and not LiteCam(self.spec.id, self.spec.input_size, head.weights,
                                         self.engine_model).kept()

    def lite_cam(self, head: Head) -> Optional[LiteCam]:
        """CAM of the exported graph without TensorFlow (`explain.lite_cam`), when it holds the
        unmodified extractor (not fine-tuned) and `head`; else None."""
        if self._fine_tuned is not False:
            return None
        return LiteCam(self.spec.id, self.spec.input_size, head.weights, self.engine_model)

    def _graph_exporter(self, head: Head, novelty: Optional[Novelty] = None,
                        thresholds: Optional[Sequence[float]] = None,
                        cache_root: Optional[AnyPath] = None) -> GraphExporter:
        self._load_tensorflow()
        from retrainer.exports.classifier import Classifier
        from retrainer.exports.graph import GraphExporter

        return GraphExporter(Classifier(self._extractor(), head, self.labels,
                                        self.options.final_tensor_name, novelty,
                                        None if thresholds is None else list(thresholds),
                                        self.tta), cache_root)

    def write_intermediate(self, step: int, head: Head) -> None:
        """The frozen graph of the head as it is at `step` (retrain.py's intermediate_<step>.pb)."""
        from retrainer.exports.graph import intermediate_graph_path

        path = intermediate_graph_path(self.options.intermediate_output_graphs_dir, step)
        self.graph_exporter(head).write_graph(intermediate_graph_path(self.intermediate_dir, step),
                                               step=step)
        self.intermediate_graphs.append(path)
        log.info("Saved intermediate graph %s", path)

    def write_all(self, head: Head, training_images: Sequence[ImageFile],
                  test_images: Sequence[ImageFile], fine_tuned: bool,
                  novelty: Optional[Novelty] = None,
                  thresholds: Optional[np.ndarray] = None) -> Exported:
        """Labels, graph + sidecar, SavedModel and .tflite if asked; then the export report.

        Args:
            head: the trained head.
            training_images: the decodable training images (int8 calibration).
            test_images: the decodable test images (the export report).
            fine_tuned: whether the extractor was fine-tuned (recorded in the sidecar).
            novelty: the fitted novelty score: every export gets the `novelty` output.
            thresholds: a multi-label head's float32 [C] thresholds (into the metadata; the
                export report then measures micro-F1).

        Raises:
            DataError: int8 without enough decodable training images.
        """
        options = self.options
        self._fine_tuned = fine_tuned
        write_labels(options.output_labels, self.labels)
        levels = None if thresholds is None else [float(value) for value in thresholds]
        sidecar = None if fine_tuned else self._kept_sidecar(head, novelty, levels)
        exporter = None
        if sidecar is None:
            exporter = self._exporter
            if (exporter is None or novelty is not None or thresholds is not None  # outputs
                    or exporter.classifier.tta != self.tta):  # intermediate graphs lack
                # Traced once; the report's heat maps then explain this same frozen graph.
                exporter = self._exporter = self._graph_exporter(head, novelty, levels,
                                                                 self.cache_root)
            exporter.classifier.head.assign(head)
            exporter.classifier.fine_tuned = fine_tuned

            def keep_template(data: bytes) -> None:  # the next run's graphs need no tracing
                if not fine_tuned:
                    self._templates(head, novelty).remember(data)

            sidecar = exporter.write_graph(options.output_graph, on_frozen=keep_template)
        outputs: dict[str, Any] = {
            "output_graph": options.output_graph,
            "output_graph_metadata": sidecar,
            "output_labels": options.output_labels,
        }
        training_files = [image.path for image in training_images]
        failures: list[str] = []
        written: list[AnyPath] = []
        if options.saved_model_dir is not None or options.tflite_files or options.onnx_files:
            if exporter is None:
                exporter = self._exporter = self._graph_exporter(head, novelty, levels)
            written = self._converted(exporter.classifier, outputs, training_files, failures)
        if self.intermediate_graphs:
            outputs["intermediate_graphs"] = list(self.intermediate_graphs)
        return Exported(outputs, self._report(test_images, written, thresholds), tuple(failures))

    def _kept_sidecar(self, head: Head, novelty: Optional[Novelty],
                      thresholds: Optional[list[float]]) -> Optional[AnyPath]:
        """The sidecar of a graph written without TensorFlow, or None (it must be traced): the
        graph at --output_graph when it is the one these inputs froze to before
        (`exports.kept`), else the graph made from this machine's template of its structure."""
        spec, options = self.spec, self.options
        metadata = classifier_metadata(spec, self.labels, options.final_tensor_name, self.tta,
                                       thresholds, novelty)
        key = frozen_graph_key(spec.id, (head.weights, head.biases), metadata,
                               None if novelty is None else novelty.references)
        kept = KeptGraphs(self.cache_root)
        data = kept.read(key, options.output_graph)
        made = data is None
        if data is None:
            data = self._templates(head, novelty).graph()
            if data is None:
                return None
            write_bytes_atomically(options.output_graph, data)
        self._kept_graph, self._kept_sha256 = data, graph_sha256(data)  # hashed once
        if made:
            kept.remember(key, self._kept_sha256)
        return write_sidecar(options.output_graph, metadata, self._kept_sha256)

    def _templates(self, head: Head, novelty: Optional[Novelty]) -> GraphTemplates:
        """This machine's templates of the exported graph's structure."""
        return GraphTemplates(self.spec, self.options.final_tensor_name, self.tta, head, novelty)

    def _converted(self, classifier: Classifier, outputs: dict[str, Any],
                   training_files: list[AnyPath], failures: list[str]) -> list[AnyPath]:
        """The SavedModel, .tflite and .onnx files asked for (into `outputs`); the paths of
        the deployable ones written."""
        from retrainer.exports.onnx import write_onnx_files
        from retrainer.exports.saved_model import write_saved_model
        from retrainer.exports.tflite import write_tflite_files

        options = self.options
        if options.saved_model_dir is not None:
            write_saved_model(classifier, options.saved_model_dir)
            outputs["saved_model_dir"] = options.saved_model_dir
        written: list[AnyPath] = []
        tflite_files, onnx_files = options.tflite_files, options.onnx_files
        for name, write, groups in (
            # each TFLite mode is a conversion of its own; ONNX converts once, then quantizes
            ("tflite_output_file", write_tflite_files, [{m: p} for m, p in tflite_files.items()]),
            ("onnx_output_file", write_onnx_files, [onnx_files] if onnx_files else []),
        ):
            paths = [path for group in groups for path in self._written(
                write, classifier, group, training_files, failures)]
            if paths:
                outputs[name] = paths[0] if len(paths) == 1 else paths
            written += paths
        return written

    def _written(self, write: Callable[..., Any], classifier: Classifier,
                 paths: dict[str, AnyPath], training_files: list[AnyPath],
                 failures: list[str]) -> list[AnyPath]:
        """Run a format's writer (int8 calibrates on the run's seeded sample of training images);
        the paths written. A failed conversion adds its one-line message to `failures` and
        costs no other export."""
        try:
            write(classifier, paths, self.options.tflite_calibration_images, training_files,
                  self.options.seed)
        except ModelError as error:
            failures.append(str(error))
            return []
        return list(paths.values())

    def _report(self, test_images: Sequence[ImageFile], written: Sequence[AnyPath],
                thresholds: Optional[np.ndarray] = None) -> tuple[ArtifactReport, ...]:
        """The export report when a .tflite, .onnx or SavedModel was written; () otherwise."""
        artifacts = self.options.verified_artifacts(written)
        if not artifacts:
            return ()
        if not test_images:
            log.warning("No test images: skipping the export report.")
            return ()
        pixels, ok = decode_files([image.path for image in test_images], self.spec.input_size)
        if thresholds is None:
            truth = np.array([image.label_index for image in test_images], np.int64)
        else:
            truth = targets_of(test_images, len(self.labels))
        return tuple(export_report([(FROZEN_GRAPH, self.options.output_graph), *artifacts],
                                   pixels[ok], truth[ok], thresholds, self.options.trust_model))
