"""`retrain`: train a new classifier on a folder of class sub-folders and export it.

Flags keep retrain.py's names and defaults (dash spellings work too). Defaults come from
`RetrainConfig`. Logs and progress go to stderr; the summary (or `--json`) goes to stdout. Exit
codes: 0 ok, 2 usage, 3 data, 4 model, 6 quality gate failed, 7 export mismatch, 130
interrupted (see retrainer/errors.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Callable, Optional

import click

from retrainer.cache.options import EXTRACTOR_PRECISIONS
from retrainer.cli import (
    VERBOSITIES,
    F,
    PathOrUrl,
    configure_logging,
    exit_at_once,
    hide_native_info_logs,
    option,
    reports_errors,
    version_option,
)
from retrainer.cli._make_image_classifier import refuses_make_image_classifier_flags
from retrainer.cli._summary import summary_lines, test_line
from retrainer.config import FLAG_ALIASES, RetrainConfig
from retrainer.data.split import SPLIT_COMPATS
from retrainer.errors import FinishedRunError
from retrainer.exports.options import TTA_MODES
from retrainer.exports.quantization import MIN_CALIBRATION_IMAGES, MODES, ONNX_MODES
from retrainer.pipeline.timer import StageTimer
from retrainer.result import RetrainResult
from retrainer.training.options import HEAD_SOLVERS, SGD_LEARNING_RATE, SGD_STEPS

_FIELDS = {field.name: field for field in dataclasses.fields(RetrainConfig)}
_ALIASES = {flag: alias for alias, flag in FLAG_ALIASES.items()}  # make_image_classifier's names
_CONSOLE = object()  # click's context object when `main` runs as the console script


def _option(name: str, help: str, **kwargs: Any) -> Callable[[F], F]:
    """`cli.option`, its default from the config (shown in --help), with its other name if it
    has one (`config.FLAG_ALIASES`)."""
    field = _FIELDS.get(name)
    if field is not None and "default" not in kwargs:
        if field.default is not dataclasses.MISSING:
            kwargs["default"] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            kwargs["default"] = field.default_factory
    kwargs.setdefault("show_default", True)
    aliases = (_ALIASES[name],) if name in _ALIASES else ()
    return option(name, *aliases, help=help, **kwargs)


_PATH = PathOrUrl()
_BATCH = click.IntRange(min=-1)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@version_option("retrain")
@_option("image_dir", "Folder with one sub-folder of images per class.", required=True,
         show_default=False, metavar="DIR")  # a string: --split_compat retrain_py hashes it
@_option("output_graph", "Where to save the trained graph (frozen GraphDef, .pb).", type=_PATH)
@_option("output_labels", "Where to save the trained graph's labels.", type=_PATH)
@_option("summaries_dir", "Where to save TensorBoard summaries (train/ and validation/).",
         type=_PATH)
@_option("bottleneck_dir", "Cache of bottleneck vectors, shared by runs.", type=_PATH,
         show_default="${XDG_CACHE_HOME:-~/.cache}/retrainer/bottlenecks")
@_option("head_solver", "How the new layer is trained: lbfgs (full-batch fit, its L2 strength "
         "chosen on the validation split), sgd (retrain.py's steps), or auto: lbfgs, unless "
         "--how_many_training_steps or --learning_rate is given.",
         type=click.Choice(HEAD_SOLVERS))
@_option("how_many_training_steps", "How many SGD training steps to run (giving it selects the "
         "sgd solver under --head_solver auto).", type=click.IntRange(min=1),
         show_default=str(SGD_STEPS))
@_option("learning_rate", "Learning rate of the SGD training (giving it selects the sgd solver "
         "under --head_solver auto).", type=float, show_default=str(SGD_LEARNING_RATE))
@_option("train_epochs", "make_image_classifier's: SGD passes over the training images; the "
         "steps are N x training images / --train_batch_size, rounded up (selects the sgd "
         "solver under --head_solver auto).", type=click.IntRange(min=1), show_default=False)
@_option("search", "Try the installed extractors (and --search_modules), each with and without "
         "distortions, on cached vectors; keep the simplest one whose cross-validated accuracy "
         "(training + validation images) is within a standard error of the best.",
         is_flag=True)
@_option("search_budget", "With --search: start no new candidate after this many seconds.",
         type=click.FloatRange(min=0, min_open=True), show_default=False)
@_option("search_modules", "With --search: also try this extractor (repeat for several).",
         multiple=True, default=(), show_default=False)
# training on images: distortions, fine-tuning, early stopping, regularisation (docs/training.md)
@_option("flip_left_right", "Randomly mirror half of the training images horizontally.",
         is_flag=True)
@_option("random_crop", "A percentage: how much margin to randomly crop off the training images.",
         type=int)
@_option("random_scale", "A percentage: how much to randomly enlarge the training images.",
         type=int)
@_option("random_brightness", "A percentage: how much to randomly multiply the training images' "
         "pixels up or down.", type=int)
@_option("distorted_variants", "With a distortion flag: distorted versions of each training image, "
         "computed once and cached (cost: this many extractions per training image).", type=int)
@_option("do_fine_tuning", "After training the new layer, also train the top of the extractor "
         "with it, on the images (minutes on CPU, not seconds).", is_flag=True)
@_option("fine_tune_blocks", "How many blocks below the extractor's last layer fine-tuning trains "
         "(EfficientNet-Lite: inverted-residual blocks; keras: layers with weights).", type=int)
@_option("fine_tune_epochs", "Passes over the training images when fine-tuning.", type=int)
@_option("fine_tune_learning_rate", "Learning rate of the fine-tuning SGD.", type=float)
@_option("early_stopping", "Stop training once the validation cross entropy has not improved for "
         "--early_stopping_patience evaluations, and keep the best weights.", is_flag=True)
@_option("early_stopping_patience", "Evaluations (every --eval_step_interval steps; fine-tuning: "
         "epochs) without improvement before --early_stopping stops.", type=int)
@_option("momentum", "SGD momentum (0: plain SGD, as retrain.py).", type=float)
@_option("dropout_rate", "Dropout on the bottleneck vectors while training (0: none).",
         type=float)
@_option("l2_regularizer", "L2 penalty on the new layer's weights (0: none).", type=float)
@_option("label_smoothing", "Label smoothing of the training targets (0: none).", type=float)
@_option("train_batch_size", "How many images to train on at a time (-1: all): the SGD and "
         "fine-tuning batch.", type=_BATCH)
@_option("testing_percentage", "Percentage of images to use as a test set.", type=float)
@_option("validation_percentage", "Percentage of images to use as a validation set.", type=float)
@_option("validation_split", "make_image_classifier's: the validation share as a fraction "
         "(0.2 = --validation_percentage 20).", type=float, show_default=False)
@_option("split_compat", "Which name the split hashes: none = the path relative to --image_dir "
         "(the same split wherever the folder is); retrain_py = retrain.py's, --image_dir as "
         "typed + that path (retrain.py's test set; docs/migrating.md).",
         type=click.Choice(SPLIT_COMPATS))
@_option("labels_csv", "Take the labels from this CSV (header 'path,labels'; paths relative to "
         "--image_dir; several labels separated by ';') instead of from class folders.",
         type=_PATH, show_default=False)
@_option("multi_label", "Train a multi-label model (one sigmoid per label, binary cross-entropy): "
         "each image may have any number of the labels (--labels_csv). Gates then measure "
         "micro-F1.", is_flag=True)
@_option("multi_label_threshold", "With --multi_label: one decision threshold for every label "
         "(default: per label, the one maximising its F1 on the validation split).",
         type=click.FloatRange(0, 1, min_open=True, max_open=True), show_default=False)
@_option("novelty_pass_rate", "Share of validation images whose novelty score must pass; images "
         "scoring above the threshold this sets are 'unknown' (label-image --reject).",
         type=click.FloatRange(0, 1, min_open=True))
@_option("audit_file", "Where to write the dataset audit (duplicates, leaks, likely mislabeled "
         "images, outliers; JSON).", type=_PATH)
@_option("skip_audit", "Do not audit the dataset (no audit file).", is_flag=True)
@_option("keep_duplicates_in_one_split", "Move each group of duplicate images into the split of "
         "its first member, so no copy straddles training and test.", is_flag=True)
@_option("eval_step_interval", "How often to evaluate the training results.",
         type=click.IntRange(min=1))
@_option("validation_batch_size",
         "How many images to validate on at a time (-1: the whole validation set).", type=_BATCH)
@_option("test_batch_size", "How many images to test on (-1: the whole test set).", type=_BATCH)
@_option("print_misclassified_test_images", "Print all misclassified test images.", is_flag=True)
@_option("metrics_file", "Write every metric, the training history, counts and flags as JSON "
         "here ('' for none).", type=_PATH)
@_option("report_html", "Write a self-contained HTML report here, with training_curves.png and "
         "confusion_matrix.png beside it ('' for none).", type=_PATH)
@_option("report_explanations", "Heat maps (class activation maps) in the report: every misclassified "
         "test image and this many correct ones per class (0: none). Built-in EfficientNet-Lite "
         "and keras: extractors.", type=click.IntRange(min=0))
@_option("assert_accuracy_at_least", "Exit 6 and export nothing if the test accuracy (validation "
         "without test images) is below this fraction, e.g. 0.9. With --multi_label: the "
         "micro-F1.",
         type=click.FloatRange(0, 1), show_default=False)
@_option("assert_recall_at_least", "Exit 6 and export nothing if any class's recall on that split "
         "is below this fraction.", type=click.FloatRange(0, 1), show_default=False)
@_option("final_tensor_name", "Name of the output classification op in the graph.")
@_option("intermediate_store_frequency",
         "Store an intermediate graph every this many steps (0: never).",
         type=click.IntRange(min=0))
@_option("intermediate_output_graphs_dir", "Where to save the intermediate graphs.", type=_PATH)
@_option("saved_model_dir", "Also export a SavedModel here (serving signature: images -> "
         "probabilities).", type=_PATH, show_default=False)
@_option("tflite_output_file", "Also export a .tflite here, with its labels and normalization as "
         "TFLite metadata (docs/exports.md).", type=_PATH, show_default=False)
@_option("tflite_quantization", "TFLite quantization: none (float32), dynamic, float16 or int8 "
         "(full integer, uint8 input/output). Repeat for several files: PATH's stem gets a "
         "_<mode> suffix.", type=click.Choice(MODES), multiple=True, default=("none",))
@_option("tflite_calibration_images", "How many training images calibrate int8, TFLite's and "
         "ONNX's (one seeded sample).",
         type=click.IntRange(min=MIN_CALIBRATION_IMAGES))
@_option("onnx_output_file", "Also export an ONNX model here (ONNX Runtime, TensorRT, OpenVINO, "
         "browsers), labels and normalization in its metadata; needs the onnx extra.", type=_PATH,
         show_default=False)
@_option("onnx_quantization", "ONNX quantization: none (float32) or int8 (ONNX Runtime static "
         "quantization, calibrated like --tflite_quantization int8). Repeat for several files: "
         "PATH's stem gets a _<mode> suffix.", type=click.Choice(ONNX_MODES), multiple=True,
         default=("none",))
@_option("max_export_accuracy_drop", "Fail (exit 7) when an export's test accuracy is more than "
         "this many points below the frozen graph's.", type=click.FloatRange(min=0),
         show_default=False)
@_option("tta", "Test-time augmentation inside every export: flip = the head reads the mean of "
         "the image's and its mirror image's vectors (twice the extractor's cost per image); "
         "auto = flip unless the validation split shows it loses (docs/training.md).",
         type=click.Choice(TTA_MODES))
@_option("tfhub_module", "Feature extractor: a built-in name (efficientnet_lite0/1/2), a TF Hub "
         "handle or a local module path.")
@_option("trust_model", "Load --tfhub_module without checking its ops first: only for a module "
         "you trust (docs/security.md).", is_flag=True)
@_option("extractor_precision", "How the bottleneck stage runs the extractor: float32, bfloat16 "
         "(oneDNN mixed precision) or int8 (LiteRT, fixed calibration); auto = int8 for the "
         "built-in EfficientNet-Lite models on CPUs with AVX2 or 64-bit Arm, else float32. Each "
         "has its own cache; the exported graph always holds the float32 network.",
         type=click.Choice(EXTRACTOR_PRECISIONS))
@_option("extraction_devices", "Local devices the bottleneck stage splits each batch across, "
         "e.g. GPU:0,GPU:1 (0,1 = GPUs) or CPU:0; auto = every GPU when there are 2 or more, "
         "else TensorFlow's default device. Not with int8 (CPU only).")
@_option("image_size", "Input size for extractors that accept several (default: the module's "
         "own).", type=click.IntRange(min=1), show_default=False)
@_option("checkpoint_path", "Where to save the trained layer's checkpoint (prefix).", type=_PATH)
@_option("logging_verbosity", "How much to log on stderr.", type=click.Choice(VERBOSITIES,
         case_sensitive=False), default="INFO")
@_option("seed", "Random seed: the same seed and data give the same numbers.",
         type=click.IntRange(min=0))
@click.option("--quiet", "-q", is_flag=True,
              help="Print only the final result and errors (no logs, no progress bar).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object with the metrics and output paths on stdout.")
@reports_errors
@refuses_make_image_classifier_flags
def main(logging_verbosity: str, quiet: bool, as_json: bool, **options: Any) -> None:
    """Retrain a classifier on IMAGE_DIR's class folders with a pretrained feature extractor.

    \b
    Examples:
      retrain --image_dir flower_photos
      retrain --image_dir flower_photos --how_many_training_steps 500 --json > result.json
      label-image --graph retrain_output/output_graph.pb photo.jpg
    """
    # As the console script, the run's time starts with the process (see `console`).
    timer = StageTimer(since_process_start=click.get_current_context().obj is _CONSOLE)
    configure_logging("ERROR" if quiet else logging_verbosity)
    if logging_verbosity.upper() != "DEBUG":
        hide_native_info_logs()
    config = RetrainConfig(show_progress=not quiet, **options)  # bad values fail before TF loads
    from retrainer.pipeline import run  # loads TensorFlow and the stages on a background thread

    try:
        result = run(config, timer)
    except FinishedRunError as error:  # a failed gate or export check: the figures still print
        _print_result(_finished(error.result, timer), config, quiet, as_json, error)
        raise
    _print_result(_finished(result, timer), config, quiet, as_json)


def console() -> None:
    """The `retrain` console script: `main`, timed from the process's start, then the process
    ends as soon as its output is out (`exit_at_once`): the summary's "Took" is its wall time."""
    exit_at_once(main, obj=_CONSOLE)


def _finished(result: RetrainResult, timer: StageTimer) -> RetrainResult:
    """`result` with the run's final figures: what is left before the process ends counts as
    "exit" (the log's last lines; `exit_at_once` then ends the process)."""
    with timer("exit"):
        for handler in logging.getLogger().handlers:
            handler.flush()
    return dataclasses.replace(result, seconds=timer.seconds(),
                               peak_memory_gib=timer.peak_memory_gib())


def _print_result(result: RetrainResult, config: RetrainConfig, quiet: bool, as_json: bool,
                  failure: Optional[FinishedRunError] = None) -> None:
    """The summary (or the --json document, with "error" when a check failed) on stdout."""
    if as_json:
        document = result.to_json()
        if failure is not None:
            document["error"] = {"exit_code": failure.exit_code, "message": str(failure)}
        click.echo(json.dumps(document, ensure_ascii=False))
        return
    click.echo(test_line(result))
    if config.print_misclassified_test_images:
        click.echo("=== MISCLASSIFIED TEST IMAGES ===")
        for image in result.misclassified:
            click.echo(f"{image.relpath:>70}  {image.predicted_label}")
    if not quiet:
        click.echo("\n".join(summary_lines(result)))


if __name__ == "__main__":
    console()
