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
from typing import Any, Optional, TypeVar

from retrainer.audit.options import AuditOptions
from retrainer.cache.options import ExtractionOptions
from retrainer.data.split import (
    SPLIT_COMPAT_NONE,
    SPLIT_COMPAT_RETRAIN_PY,
    SPLIT_COMPATS,
    validate_percentages,
)
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

View = TypeVar("View", TrainingOptions, ReportOptions, ExportOptions)
# The extractor `retrain`, `retrain-extract` and the imagenet check use unless told otherwise.
DEFAULT_EXTRACTOR = "efficientnet_lite0"
# make_image_classifier's names for retrain's flags: the same setting under another name
# (docs/migrating.md). The CLI accepts both spellings; so does `retrainer.retrain(**options)`.
FLAG_ALIASES = {"labels_output_file": "output_labels", "batch_size": "train_batch_size"}
# make_image_classifier's flags that have no meaning here -> what to use instead
UNSUPPORTED_FLAGS = {
    "l1_regularizer": "retrainer has no L1 penalty: use --l2_regularizer",
    "do_data_augmentation": "use retrainer's distortions: --flip_left_right, --random_crop, "
                            "--random_scale, --random_brightness",
    "horizontal_flip": "use --flip_left_right",
    "rotation_range": "retrainer does not rotate images: use --flip_left_right, --random_crop, "
                      "--random_scale or --random_brightness",
    "shear_range": "retrainer does not shear images: use --flip_left_right, --random_crop, "
                   "--random_scale or --random_brightness",
    "width_shift_range": "use --random_crop (a random window, i.e. a shift)",
    "height_shift_range": "use --random_crop (a random window, i.e. a shift)",
    "zoom_range": "use --random_scale",
    "distribution_strategy": "use --extraction_devices to spread the bottleneck stage over "
                             "several GPUs",
    "use_tf_data_input": "drop it: retrainer always reads images with its own decoder",
    "set_memory_growth": "drop it and set TF_FORCE_GPU_ALLOW_GROWTH=true in the environment",
}


def unsupported_flag_error(name: str) -> UsageError:
    """The one-line error for make_image_classifier's flag `name` (a key of UNSUPPORTED_FLAGS)."""
    return UsageError(f"--{name} is a make_image_classifier flag that retrainer does not take; "
                      f"{UNSUPPORTED_FLAGS[name]} (docs/migrating.md).")


def default_bottleneck_dir() -> Path:
    """`${XDG_CACHE_HOME:-~/.cache}/retrainer/bottlenecks`: shared by runs, survives reboots."""
    return user_cache_dir() / "bottlenecks"


@dataclasses.dataclass(frozen=True)
class RetrainConfig:
    """Every option of a retrain run (retrain.py's flag names and defaults, plus a few new ones).

    Raises:
        UsageError: on construction, for any value that cannot work (the message names the flag).
    """

    image_dir: str | AnyPath  # as typed: --split_compat retrain_py hashes this spelling
    output_graph: AnyPath = DEFAULT_GRAPH
    output_labels: AnyPath = DEFAULT_OUTPUT_DIR / LABELS_FILENAME
    summaries_dir: AnyPath = DEFAULT_OUTPUT_DIR / "retrain_logs"
    bottleneck_dir: AnyPath = dataclasses.field(default_factory=default_bottleneck_dir)
    # the head's solver (docs/training.md): auto = lbfgs, or sgd when the SGD flags are given
    head_solver: str = "auto"
    how_many_training_steps: Optional[int] = None  # None: SGD_STEPS
    learning_rate: Optional[float] = None  # None: SGD_LEARNING_RATE
    train_epochs: Optional[int] = None  # make_image_classifier's: SGD steps from the training size
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
    validation_split: Optional[float] = None  # make_image_classifier's: a fraction, or None
    split_compat: str = SPLIT_COMPAT_NONE  # retrain_py: hash the path as retrain.py did
    # labels from a manifest, multi-label heads, the novelty score (docs/multi_label.md)
    labels_csv: Optional[AnyPath] = None
    multi_label: bool = False
    multi_label_threshold: Optional[float] = None
    novelty_pass_rate: float = 0.95
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
    tta: str = "auto"  # test-time augmentation inside every export: auto, none or flip
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
        if not os.fspath(self.image_dir):
            raise UsageError("--image_dir must not be empty.")
        for field in PATH_FLAGS:
            value = getattr(self, field)
            if field in _OFF_WHEN_EMPTY:
                object.__setattr__(self, field, as_path(value) if value not in (None, "") else None)
            elif field != "image_dir" and value is not None:  # image_dir stays as typed
                if not os.fspath(value):
                    raise UsageError(f"--{field} must not be empty.")
                object.__setattr__(self, field, as_path(value))  # URLs stay URLs
        for flag, choices in (("tflite_quantization", MODES), ("onnx_quantization", ONNX_MODES)):
            object.__setattr__(self, flag, quantization_modes(flag, getattr(self, flag), choices))
        self._take_validation_split()
        validate_percentages(self.validation_percentage, self.testing_percentage)
        require("split_compat", self.split_compat, self.split_compat in SPLIT_COMPATS,
                f"one of {list(SPLIT_COMPATS)}")
        require("seed", self.seed, 0 <= self.seed < 2**63, "a number from 0 to 2**63 - 1")
        budget = self.search_budget
        require("search_budget", budget, budget is None or (math.isfinite(budget) and budget > 0),
                "a positive number of seconds")
        object.__setattr__(self, "search_modules", tuple(self.search_modules))
        # Each stage's view is built (and checked) now, so a bad flag fails before any work.
        _ = (self.training, self.extraction, self.reports, self.audit, self.exports)

    def _take_validation_split(self) -> None:
        """make_image_classifier's --validation_split F sets --validation_percentage to 100 * F."""
        fraction = self.validation_split
        if fraction is None:
            return
        require("validation_split", fraction, 0 <= fraction < 1,
                "a fraction from 0 up to (not including) 1, e.g. 0.2")
        percentage = round(fraction * 100, 9)
        default = _DEFAULTS["validation_percentage"]
        if self.validation_percentage not in (default, percentage):
            raise UsageError(
                f"--validation_split {fraction:g} and --validation_percentage "
                f"{self.validation_percentage:g} both set the validation share; pass one of them.")
        object.__setattr__(self, "validation_percentage", percentage)

    @property
    def retrain_py_image_dir(self) -> Optional[str]:
        """--image_dir as typed when --split_compat retrain_py hashes it, else None."""
        if self.split_compat != SPLIT_COMPAT_RETRAIN_PY:
            return None
        return os.fspath(self.image_dir)

    @functools.cached_property
    def training(self) -> TrainingOptions:
        """The head's training, distorted vectors and fine-tuning (retrainer.training.options)."""
        return self._view(TrainingOptions)

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
        return self._view(ReportOptions)

    @functools.cached_property
    def exports(self) -> ExportOptions:
        """What the export stage writes (retrainer.exports.options)."""
        return self._view(ExportOptions)

    def _view(self, view: type[View]) -> View:
        """A stage's view whose fields are flags of the same names, taken by name."""
        return view(**{field.name: getattr(self, field.name) for field in dataclasses.fields(view)})

    def to_json(self) -> dict[str, Any]:
        """The flags, JSON-ready (paths as strings): the result document's "flags"."""
        return {name: os.fspath(value) if isinstance(value, os.PathLike) else value
                for name, value in dataclasses.asdict(self).items()}


_DEFAULTS = {field.name: field.default for field in dataclasses.fields(RetrainConfig)}
# The flags naming a file or folder (their annotation names AnyPath): the run's data, cache and
# outputs, in declaration order.
PATH_FLAGS = tuple(field.name for field in dataclasses.fields(RetrainConfig)
                   if "AnyPath" in str(field.type))
_OFF_WHEN_EMPTY = ("metrics_file", "report_html")  # an empty path turns that report off
