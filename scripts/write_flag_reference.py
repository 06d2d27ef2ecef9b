"""Write docs/flags.md, the flag reference, from the commands' own click definitions.

`retrain`'s defaults live once, in `retrainer.config.RetrainConfig`, and its click options read
them from there; the help texts are the options' own. So the page says what `--help` says.
tests/test_docs.py fails when docs/flags.md differs from what this script writes.

    .venv/bin/python scripts/write_flag_reference.py            # rewrite docs/flags.md
    .venv/bin/python scripts/write_flag_reference.py --check    # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Iterable

import click

REPO_ROOT = Path(__file__).resolve().parents[1]
PAGE = REPO_ROOT / "docs" / "flags.md"

# `retrain`'s flags by topic, in page order. A flag missing here lands in "Other flags", and
# tests/test_docs.py then asks for it to be placed.
RETRAIN_SECTIONS = {
    "Data and split": [
        "image_dir", "testing_percentage", "validation_percentage", "validation_split",
        "split_compat"],
    "Feature extractor and bottleneck cache": [
        "tfhub_module", "image_size", "trust_model", "extractor_precision", "extraction_devices",
        "bottleneck_dir"],
    "Training the new layer": [
        "head_solver", "how_many_training_steps", "learning_rate", "train_epochs",
        "train_batch_size", "eval_step_interval", "validation_batch_size", "test_batch_size",
        "momentum", "dropout_rate", "l2_regularizer", "label_smoothing", "early_stopping",
        "early_stopping_patience", "seed"],
    "Searching extractors and distortions": ["search", "search_budget", "search_modules"],
    "Training on images: distortions and fine-tuning": [
        "flip_left_right", "random_crop", "random_scale", "random_brightness",
        "distorted_variants", "do_fine_tuning", "fine_tune_blocks", "fine_tune_epochs",
        "fine_tune_learning_rate"],
    "Labels from a CSV, multi-label models, unknown": [
        "labels_csv", "multi_label", "multi_label_threshold", "novelty_pass_rate"],
    "Dataset audit": ["audit_file", "skip_audit", "keep_duplicates_in_one_split"],
    "Outputs": [
        "output_graph", "output_labels", "final_tensor_name", "summaries_dir", "checkpoint_path",
        "intermediate_store_frequency", "intermediate_output_graphs_dir"],
    "Deployable exports": [
        "saved_model_dir", "tflite_output_file", "tflite_quantization",
        "tflite_calibration_images", "onnx_output_file", "onnx_quantization",
        "max_export_accuracy_drop", "tta"],
    "Reports and quality gates": [
        "metrics_file", "report_html", "report_explanations", "print_misclassified_test_images",
        "assert_accuracy_at_least", "assert_recall_at_least"],
    "Output on the terminal": ["logging_verbosity", "quiet", "as_json", "version"],
}
OTHER = "Other flags"

HEADER = """\
# Flag reference

Every flag of `retrain`, `label-image`, `retrain-extract` and `python -m retrainer.cli.imagenet`,
with its default. This page is generated from the commands themselves
(`python scripts/write_flag_reference.py`), so it says what `--help` (or `-h`) says. Every
underscore flag also has a dash spelling (`--image_dir` and `--image-dir`). In Python,
`retrainer.retrain()` takes `retrain`'s flags as keyword arguments in underscore spelling
([python.md](python.md)).

Shell completion (click's): add `eval "$(_RETRAIN_COMPLETE=bash_source retrain)"` to `~/.bashrc`,
and the same with `_LABEL_IMAGE_COMPLETE` for `label-image` and `_RETRAIN_EXTRACT_COMPLETE` for
`retrain-extract`; zsh and fish take `zsh_source` and `fish_source` instead of `bash_source`.
"""
_UNSET = getattr(click.core, "UNSET", None)  # click >= 8.3's "no default" marker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/flags.md is stale")
    args = parser.parse_args()
    text = reference()
    if args.check:
        if PAGE.read_text(encoding="utf-8") != text:
            sys.exit(f"{PAGE} is stale: run python scripts/write_flag_reference.py")
        return
    PAGE.write_text(text, encoding="utf-8")
    print(PAGE)


def reference() -> str:
    """The whole page."""
    from retrainer.cli.extract import main as extract
    from retrainer.cli.imagenet import main as imagenet
    from retrainer.cli.label_image import main as label_image
    from retrainer.cli.retrain import main as retrain

    parts = [HEADER]
    parts += ["## `retrain`\n", _summary(retrain),
              "make_image_classifier's other flags stop `retrain` with a message naming the "
              "replacement ([migrating.md](migrating.md)).\n"]
    for title, params in retrain_sections(retrain).items():
        parts += [f"### {title}\n", _table(params)]
    parts += ["## `label-image`\n", _summary(label_image), _arguments(label_image),
              _table(_visible(label_image))]
    parts += ["## `retrain-extract`\n", _summary(extract),
              "Any other flag is passed to Apache Beam as a pipeline option (`--runner`, "
              "`--direct_num_workers`, `--project`, ...): see [beam.md](beam.md).\n",
              _table(_visible(extract))]
    parts += ["## `python -m retrainer.cli.imagenet`\n", _summary(imagenet),
              _arguments(imagenet), _table(_visible(imagenet))]
    return "\n".join(parts)


def retrain_sections(command: click.Command) -> dict[str, list[click.Parameter]]:
    """{section title: its visible options}, in RETRAIN_SECTIONS' order; unplaced ones last."""
    by_name = {param.name: param for param in _visible(command)}
    sections = {title: [by_name.pop(name) for name in names if name in by_name]
                for title, names in RETRAIN_SECTIONS.items()}
    if by_name:
        sections[OTHER] = list(by_name.values())
    return {title: params for title, params in sections.items() if params}


def _visible(command: click.Command) -> list[click.Parameter]:
    """The options --help lists, but --help itself."""
    context = click.Context(command)
    help_option = command.get_help_option(context)
    return [param for param in command.get_params(context)
            if isinstance(param, click.Option) and not param.hidden and param is not help_option]


def _summary(command: click.Command) -> str:
    return (command.help or "").split("\n\n")[0].strip() + "\n"


def _arguments(command: click.Command) -> str:
    arguments = [param for param in command.params if isinstance(param, click.Argument)]
    return "".join(f"Arguments: `{param.make_metavar(click.Context(command))}`.\n"
                   for param in arguments)


def _table(params: Iterable[click.Parameter]) -> str:
    rows = ["| Flag | Default | Meaning |", "|---|---|---|"]
    for param in params:
        assert isinstance(param, click.Option)
        rows.append(f"| {_names(param)} | {_default(param)} | {_meaning(param)} |")
    return "\n".join(rows) + "\n"


def _names(param: click.Option) -> str:
    """`--flag VALUE`, its other names (not the dash spellings) after it."""
    spellings = [*param.opts, *param.secondary_opts]
    underscored = {name[2:] for name in spellings if "_" in name}
    names = [name for name in spellings  # the dash spellings go without saying
             if not (name.startswith("--") and name[2:].replace("-", "_") in underscored
                     and "-" in name[2:])]
    value = "" if param.is_flag else f" {_metavar(param)}"
    first, *others = names
    text = f"`{first}{value}`"
    return (text + "".join(f", `{other}`" for other in others)).replace("|", "\\|")


def _metavar(param: click.Option) -> str:
    if param.metavar:
        return param.metavar
    kind = param.type
    if isinstance(kind, click.Choice):
        return "|".join(str(choice) for choice in kind.choices)
    names = {"integer range": "N", "integer": "N", "float range": "X", "float": "X",
             "path": "PATH", "text": "TEXT"}
    return names.get(kind.name, kind.name.upper())


def _default(param: click.Option) -> str:
    if param.required:
        return "required"
    if param.is_flag and param.default in (False, None, _UNSET):
        return "off"
    shown = param.show_default
    if isinstance(shown, str):
        return f"`{shown}`"
    default: Any = param.default
    if callable(default) or default in (None, _UNSET) or shown is False:
        return "none"
    if isinstance(default, (tuple, list)):
        return ", ".join(f"`{item}`" for item in default) or "none"
    return f"`{default}`"


def _meaning(param: click.Option) -> str:
    text = " ".join((param.help or "").split())
    text = re.sub(r"\s*\[default:[^\]]*\]", "", text)  # the Default column says it
    text = re.sub(r"docs/([a-z_]+)\.md", r"[\1.md](\1.md)", text)
    kind = param.type
    limits = []
    if isinstance(kind, click.Choice) and not param.is_flag:
        limits.append("one of " + ", ".join(f"`{choice}`" for choice in kind.choices))
    if isinstance(kind, (click.IntRange, click.FloatRange)):
        limits.append(kind._describe_range())  # click's own wording, as in --help
    if param.multiple:
        limits.append("repeatable")
    if limits:
        text += f" ({'; '.join(limits)})"
    return text.replace("|", "\\|")


if __name__ == "__main__":
    main()
