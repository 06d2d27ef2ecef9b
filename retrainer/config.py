"""Every option of a retrain run, with its default: the CLI reads its flags and defaults from here.

Only the standard library and light project modules are imported, so reading the config (e.g. for
`retrain --help`) does not load TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from pathlib import Path
from typing import Any, Optional

from retrainer.audit.options import AuditOptions
from retrainer.cache.options import ExtractionOptions
from retrainer.data.split import validate_percentages
from retrainer.engines import AUTO, AUTO_DEVICES
from retrainer.errors import UsageError, require
from retrainer.exports.options import ExportOptions, quantization_modes
from retrainer.exports.quantization import DEFAULT_CALIBRATION_IMAGES, MODES, ONNX_MODES
from retrainer.formats.graph_contract import (
    DEFAULT_GRAPH,
    DEFAULT_OUTPUT_DIR,
    LABELS_FILENAME,
    OUTPUT_OP,
)
from retrainer.io.host import user_cache_dir
from retrainer.io.storage import AnyPath, as_path
from retrainer.reports.options import ReportOptions
from retrainer.training.options import WHOLE_SET, TrainingOptions

# The extractor `retrain`, `retrain-extract` and the imagenet check use unless told otherwise.
DEFAULT_EXTRACTOR = "efficientnet_lite0"


def default_bottleneck_dir() -> Path:
    """`${XDG_CACHE_HOME:-~/.cache}/retrainer/bottlenecks`: shared by runs, survives reboots."""
    return user_cache_dir() / "bottlenecks"


@dataclasses.dataclass(frozen=True)
class RetrainConfig:
    """Every option of a retrain run (retrain.py's flag names and defaults, plus a few new ones).

    Raises:
        UsageError: on construction, for any value that cannot work (the message names the flag).
    """

    image_dir: AnyPath
    output_graph: AnyPath = DEFAULT_GRAPH
    output_labels: AnyPath = DEFAULT_OUTPUT_DIR / LABELS_FILENAME
    summaries_dir: AnyPath = DEFAULT_OUTPUT_DIR / "retrain_logs"
    bottleneck_dir: AnyPath = dataclasses.field(default_factory=default_bottleneck_dir)
    # the head's solver (docs/training.md): auto = lbfgs, or sgd when the SGD flags are given
    head_solver: str = "auto"
    how_many_training_steps: Optional[int] = None  # None: SGD_STEPS
    learning_rate: Optional[float] = None  # None: SGD_LEARNING_RATE
    # --search: extractors and distortions tried on cached vectors, chosen on validation
    search: bool = False
    search_budget: Optional[float] = None
    search_modules: tuple[str, ...] = ()
    # training on images: distortions, fine-tuning, early stopping, regularisation (docs/training.md)
    flip_left_right: bool = False
    random_crop: int = 0
    random_scale: int = 0
    random_brightness: int = 0
    distorted_variants: int = 4
    do_fine_tuning: bool = False
    fine_tune_blocks: int = 4
    fine_tune_epochs: int = 10
    fine_tune_learning_rate: float = 0.003
    early_stopping: bool = False
    early_stopping_patience: int = 10
    momentum: float = 0.0
    dropout_rate: float = 0.0
    l2_regularizer: float = 0.0
    label_smoothing: float = 0.0
    testing_percentage: float = 10
    validation_percentage: float = 10
    # dataset audit (retrainer/audit, docs/audit.md)
    audit_file: AnyPath = DEFAULT_OUTPUT_DIR / "audit.json"
    skip_audit: bool = False
    keep_duplicates_in_one_split: bool = False
    eval_step_interval: int = 10
    train_batch_size: int = 100
    test_batch_size: int = WHOLE_SET
    validation_batch_size: int = 100
    print_misclassified_test_images: bool = False
    # reports and quality gates (issue 12): None turns a report off; gates are fractions or None
    metrics_file: Optional[AnyPath] = DEFAULT_OUTPUT_DIR / "metrics.json"
    report_html: Optional[AnyPath] = DEFAULT_OUTPUT_DIR / "report.html"
    report_explanations: int = 3  # heat maps of N correct test images per class (+ the wrong ones)
    assert_accuracy_at_least: Optional[float] = None
    assert_recall_at_least: Optional[float] = None
    final_tensor_name: str = OUTPUT_OP
    intermediate_store_frequency: int = 0
    intermediate_output_graphs_dir: AnyPath = DEFAULT_OUTPUT_DIR / "intermediate_graphs"
    saved_model_dir: Optional[AnyPath] = None
    # deployable exports: TFLite and the export report (docs/exports.md)
    tflite_output_file: Optional[AnyPath] = None
    tflite_quantization: tuple[str, ...] = ("none",)
    tflite_calibration_images: int = DEFAULT_CALIBRATION_IMAGES
    max_export_accuracy_drop: Optional[float] = None
    # ONNX export, int8 calibrated like the TFLite int8 export (docs/exports.md)
    onnx_output_file: Optional[AnyPath] = None
    onnx_quantization: tuple[str, ...] = ("none",)
    tfhub_module: str = DEFAULT_EXTRACTOR
    trust_model: bool = False  # load --tfhub_module without checking its ops (docs/security.md)
    # extractor precision (retrainer/engines): how the bottleneck stage runs the extractor
    extractor_precision: str = AUTO
    extraction_devices: str = AUTO_DEVICES  # "GPU:0,GPU:1": batches split across them
    image_size: Optional[int] = None
    checkpoint_path: AnyPath = DEFAULT_OUTPUT_DIR / "checkpoint" / "retrain_checkpoint"
    seed: int = 0
    show_progress: bool = True

    def __post_init__(self) -> None:
        for field in ("image_dir", "output_graph", "output_labels", "summaries_dir",
                      "bottleneck_dir", "intermediate_output_graphs_dir", "checkpoint_path",
                      "saved_model_dir", "audit_file", "tflite_output_file", "onnx_output_file"):
            value = getattr(self, field)
            if value is not None:
                if not os.fspath(value):
                    raise UsageError(f"--{field} must not be empty.")
                object.__setattr__(self, field, as_path(value))  # URLs stay URLs
        for field in ("metrics_file", "report_html"):  # an empty path turns that report off
            value = getattr(self, field)
            object.__setattr__(self, field, as_path(value) if value not in (None, "") else None)
        for flag, choices in (("tflite_quantization", MODES), ("onnx_quantization", ONNX_MODES)):
            object.__setattr__(self, flag, quantization_modes(flag, getattr(self, flag), choices))
        validate_percentages(self.validation_percentage, self.testing_percentage)
        require("seed", self.seed, 0 <= self.seed < 2**63, "a number from 0 to 2**63 - 1")
        budget = self.search_budget
        require("search_budget", budget, budget is None or (math.isfinite(budget) and budget > 0),
                "a positive number of seconds")
        object.__setattr__(self, "search_modules", tuple(self.search_modules))
        # Each stage's view is built (and checked) now, so a bad flag fails before any work.
        _ = (self.training, self.extraction, self.reports, self.audit, self.exports)

    @functools.cached_property
    def training(self) -> TrainingOptions:
        """The head's training, distorted vectors and fine-tuning (retrainer.training.options)."""
        return TrainingOptions(**{field.name: getattr(self, field.name)
                                  for field in dataclasses.fields(TrainingOptions)})

    @functools.cached_property
    def extraction(self) -> ExtractionOptions:
        """How the bottleneck stage computes vectors (retrainer.cache.options)."""
        return ExtractionOptions.from_flags(self.tfhub_module, self.image_size,
                                            self.extractor_precision, self.extraction_devices,
                                            self.bottleneck_dir, self.show_progress,
                                            self.trust_model)

    @functools.cached_property
    def audit(self) -> AuditOptions:
        """The dataset audit (retrainer.audit.options)."""
        return AuditOptions(not self.skip_audit, self.audit_file,
                            self.keep_duplicates_in_one_split, self.bottleneck_dir, self.seed,
                            self.validation_percentage, self.testing_percentage)

    @functools.cached_property
    def reports(self) -> ReportOptions:
        """The metrics file, the HTML report and the quality gates (retrainer.reports.options)."""
        return ReportOptions(self.metrics_file, self.report_html, self.summaries_dir,
                             self.assert_accuracy_at_least, self.assert_recall_at_least,
                             self.report_explanations)

    @functools.cached_property
    def exports(self) -> ExportOptions:
        """What the export stage writes (retrainer.exports.options)."""
        return ExportOptions(self.output_graph, self.output_labels, self.final_tensor_name,
                             self.intermediate_store_frequency, self.intermediate_output_graphs_dir,
                             self.saved_model_dir, self.tflite_output_file,
                             self.tflite_quantization, self.onnx_output_file,
                             self.onnx_quantization, self.tflite_calibration_images,
                             self.max_export_accuracy_drop, self.seed)

    def to_json(self) -> dict[str, Any]:
        """The flags, JSON-ready (paths as strings): the result document's "flags"."""
        return {name: os.fspath(value) if isinstance(value, os.PathLike) else value
                for name, value in dataclasses.asdict(self).items()}
