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

from retrainer.engines import AUTO, AUTO_DEVICES, PRECISIONS, parse_devices
from retrainer.errors import UsageError
from retrainer.exports.quantization import DEFAULT_CALIBRATION_IMAGES
from retrainer.split import validate_percentages
from retrainer.storage import AnyPath, as_path

# Same value as retrainer.extractors.DEFAULT_EXTRACTOR, which cannot be imported here: it loads
# TensorFlow (tests check the two agree).
DEFAULT_EXTRACTOR = "efficientnet_lite0"
EXTRACTOR_PRECISIONS = (AUTO, *PRECISIONS)
# retrain.py wrote to fixed /tmp paths, which clashed between users (tensorflow/hub#302).
DEFAULT_OUTPUT_DIR = Path("retrain_output")
WHOLE_SET = -1
HEAD_SOLVERS = ("auto", "lbfgs", "sgd")
# retrain.py's SGD defaults, used by the SGD solver when the flags are not given
SGD_STEPS = 4000
SGD_LEARNING_RATE = 0.01
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
    output_graph: AnyPath = DEFAULT_OUTPUT_DIR / "output_graph.pb"
    output_labels: AnyPath = DEFAULT_OUTPUT_DIR / "output_labels.txt"
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
    final_tensor_name: str = "final_result"
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
                      "saved_model_dir", "audit_file"):
            value = getattr(self, field)
            if value is not None:
                if not os.fspath(value):
                    raise UsageError(f"--{field} must not be empty.")
                object.__setattr__(self, field, as_path(value))  # URLs stay URLs
        validate_percentages(self.validation_percentage, self.testing_percentage)
        self._require("head_solver", lambda name: name in HEAD_SOLVERS,
                      f"one of {list(HEAD_SOLVERS)}")
        self._require("how_many_training_steps", lambda steps: steps is None or steps >= 1,
                      "at least 1")
        self._require("learning_rate",
                      lambda rate: rate is None or (math.isfinite(rate) and rate > 0),
                      "a positive number")
        self._require("search_budget",
                      lambda seconds: seconds is None or (math.isfinite(seconds) and seconds > 0),
                      "a positive number of seconds")
        object.__setattr__(self, "search_modules", tuple(self.search_modules))
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
        self._require("report_explanations", lambda count: count >= 0, "0 (none) or more")
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
        if self.keep_duplicates_in_one_split and self.skip_audit:
            raise UsageError("--keep_duplicates_in_one_split needs the audit; drop --skip_audit.")
        from retrainer.exports.validation import validate_export_options

        validate_export_options(self)
        if self.output_graph == self.output_labels:
            raise UsageError(
                f"--output_graph and --output_labels are the same file: {self.output_graph}"
            )

    @property
    def devices(self) -> tuple[str, ...]:
        """`--extraction_devices` as TensorFlow device names; () for auto."""
        return parse_devices(self.extraction_devices)

    @property
    def solver(self) -> str:
        """The head's solver: --head_solver, where auto means lbfgs unless retrain.py's SGD flags
        (--how_many_training_steps, --learning_rate) were given."""
        if self.head_solver != "auto":
            return self.head_solver
        sgd_asked = self.how_many_training_steps is not None or self.learning_rate is not None
        return "sgd" if sgd_asked else "lbfgs"

    @property
    def training_steps(self) -> int:
        """SGD steps: --how_many_training_steps, else retrain.py's 4,000."""
        return SGD_STEPS if self.how_many_training_steps is None else self.how_many_training_steps

    @property
    def sgd_learning_rate(self) -> float:
        """SGD learning rate: --learning_rate, else retrain.py's 0.01."""
        return SGD_LEARNING_RATE if self.learning_rate is None else self.learning_rate

    @property
    def has_quality_gates(self) -> bool:
        return self.assert_accuracy_at_least is not None or self.assert_recall_at_least is not None

    def _require(self, field: str, valid: Callable[[Any], bool], expected: str) -> None:
        value = getattr(self, field)
        if not valid(value):
            raise UsageError(f"--{field} must be {expected}. Received: {value!r}.")
