"""Every option of a retrain run, with its default: the CLI reads its flags and defaults from here.

Only the standard library and light project modules are imported, so reading the config (e.g. for
`retrain --help`) does not load TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Optional

from retrainer.data.split import validate_percentages
from retrainer.engines import AUTO, AUTO_DEVICES, PRECISIONS, parse_devices
from retrainer.errors import UsageError
from retrainer.exports.quantization import DEFAULT_CALIBRATION_IMAGES, MIN_CALIBRATION_IMAGES, MODES
from retrainer.formats.graph_contract import (
    DEFAULT_GRAPH,
    DEFAULT_OUTPUT_DIR,
    LABELS_FILENAME,
    OUTPUT_OP,
)
from retrainer.io.storage import AnyPath, as_path

# Same value as retrainer.extractors.DEFAULT_EXTRACTOR, which cannot be imported here: it loads
# TensorFlow (tests check the two agree).
DEFAULT_EXTRACTOR = "efficientnet_lite0"
EXTRACTOR_PRECISIONS = (AUTO, *PRECISIONS)
WHOLE_SET = -1
_OP_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\-/]*$")  # TensorFlow's rule for op names


def default_bottleneck_dir() -> Path:
    """`${XDG_CACHE_HOME:-~/.cache}/retrainer/bottlenecks`: shared by runs, survives reboots."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache_home) / "retrainer" / "bottlenecks"


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
    how_many_training_steps: int = 4000
    learning_rate: float = 0.01
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
    tfhub_module: str = DEFAULT_EXTRACTOR
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
                      "saved_model_dir", "audit_file", "labels_csv"):
            value = getattr(self, field)
            if value is not None:
                if not os.fspath(value):
                    raise UsageError(f"--{field} must not be empty.")
                object.__setattr__(self, field, as_path(value))  # URLs stay URLs
        validate_percentages(self.validation_percentage, self.testing_percentage)
        self._require("how_many_training_steps", lambda steps: steps >= 1, "at least 1")
        self._require("learning_rate", lambda rate: math.isfinite(rate) and rate > 0,
                      "a positive number")
        self._require("eval_step_interval", lambda steps: steps >= 1, "at least 1")
        for field in ("train_batch_size", "validation_batch_size", "test_batch_size"):
            self._require(field, lambda size: size >= 1 or size == WHOLE_SET,
                          "at least 1, or -1 for the whole set")
        self._require("intermediate_store_frequency", lambda steps: steps >= 0,
                      "0 (never) or a number of steps")
        self._require("final_tensor_name",
                      lambda name: bool(_OP_NAME.match(name)) and name != "Placeholder",
                      "a TensorFlow op name other than Placeholder (letters, digits, _ . - /)")
        self._require("image_size", lambda size: size is None or size >= 1, "a positive size")
        self._require("extractor_precision", lambda name: name in EXTRACTOR_PRECISIONS,
                      f"one of {list(EXTRACTOR_PRECISIONS)}")
        parse_devices(self.extraction_devices)  # spelling only; existence once TensorFlow loads
        self._require("seed", lambda seed: 0 <= seed < 2**63, "a number from 0 to 2**63 - 1")
        # reports and quality gates: an empty path turns that report off
        for field in ("metrics_file", "report_html"):
            value = getattr(self, field)
            object.__setattr__(self, field, as_path(value) if value not in (None, "") else None)
        for field in ("assert_accuracy_at_least", "assert_recall_at_least"):
            self._require(field, lambda x: x is None or 0 <= x <= 1, "a fraction from 0 to 1")
        if self.metrics_file is not None and self.metrics_file == self.report_html:
            raise UsageError(f"--metrics_file and --report_html are the same file: "
                             f"{self.metrics_file}")
        # training on images
        for field in ("random_crop", "random_scale"):
            self._require(field, lambda percent: percent >= 0, "a percentage, 0 or more")
        self._require("random_brightness", lambda percent: 0 <= percent <= 100,
                      "a percentage from 0 to 100")
        for field in ("distorted_variants", "fine_tune_epochs", "early_stopping_patience"):
            self._require(field, lambda count: count >= 1, "at least 1")
        self._require("fine_tune_blocks", lambda blocks: blocks >= 0, "0 or more")
        self._require("fine_tune_learning_rate", lambda rate: math.isfinite(rate) and rate > 0,
                      "a positive number")
        for field in ("momentum", "dropout_rate", "label_smoothing"):
            self._require(field, lambda value: 0 <= value < 1, "from 0 up to (not including) 1")
        self._require("l2_regularizer", lambda value: math.isfinite(value) and value >= 0,
                      "0 or a positive number")
        self._require("multi_label_threshold", lambda x: x is None or 0 < x < 1,
                      "a probability between 0 and 1 (exclusive)")
        if self.multi_label_threshold is not None and not self.multi_label:
            raise UsageError("--multi_label_threshold applies to --multi_label models; add "
                             "--multi_label or drop the threshold.")
        self._require("novelty_pass_rate", lambda x: 0 < x <= 1, "a fraction above 0, up to 1")
        if self.keep_duplicates_in_one_split and self.skip_audit:
            raise UsageError("--keep_duplicates_in_one_split needs the audit; drop --skip_audit.")
        _validate_export_options(self)
        if self.output_graph == self.output_labels:
            raise UsageError(
                f"--output_graph and --output_labels are the same file: {self.output_graph}"
            )

    @property
    def devices(self) -> tuple[str, ...]:
        """`--extraction_devices` as TensorFlow device names; () for auto."""
        return parse_devices(self.extraction_devices)

    @property
    def has_quality_gates(self) -> bool:
        return self.assert_accuracy_at_least is not None or self.assert_recall_at_least is not None

    def _require(self, field: str, valid: Callable[[Any], bool], expected: str) -> None:
        value = getattr(self, field)
        if not valid(value):
            raise UsageError(f"--{field} must be {expected}. Received: {value!r}.")


def _validate_export_options(config: RetrainConfig) -> None:
    """Normalise and check tflite_output_file, tflite_quantization, tflite_calibration_images and
    max_export_accuracy_drop in place (the config is frozen: object.__setattr__).

    Raises:
        UsageError: naming the flag.
    """
    if config.tflite_output_file is not None:
        if not os.fspath(config.tflite_output_file):
            raise UsageError("--tflite_output_file must not be empty.")
        object.__setattr__(config, "tflite_output_file", as_path(config.tflite_output_file))
    modes = config.tflite_quantization
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    modes = tuple(part.strip() for mode in modes for part in mode.split(",") if part.strip())
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not modes:
        raise UsageError(
            f"--tflite_quantization must be one of {{{', '.join(MODES)}}} (repeat it for several "
            f"files). Received: {', '.join(unknown) or 'nothing'}."
        )
    if len(set(modes)) != len(modes):
        raise UsageError(f"--tflite_quantization lists a mode twice: {', '.join(modes)}.")
    object.__setattr__(config, "tflite_quantization", modes)
    if config.tflite_calibration_images < MIN_CALIBRATION_IMAGES:
        raise UsageError(
            f"--tflite_calibration_images must be at least {MIN_CALIBRATION_IMAGES}. "
            f"Received: {config.tflite_calibration_images}."
        )
    drop = config.max_export_accuracy_drop
    if drop is not None:
        if not (math.isfinite(drop) and drop >= 0):
            raise UsageError(
                f"--max_export_accuracy_drop must be a number of points >= 0. Received: {drop!r}."
            )
        if config.tflite_output_file is None and config.saved_model_dir is None:
            raise UsageError(
                "--max_export_accuracy_drop compares exports with the frozen graph; pass "
                "--tflite_output_file or --saved_model_dir too."
            )
