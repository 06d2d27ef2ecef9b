"""`label-image`: classify image files with a model exported by `retrain`, for people and for scripts.

`--graph` takes a frozen graph (.pb), a .tflite, an .onnx or a SavedModel folder (docs/exports.md).

Flags keep TensorFlow label_image.py's names (dash spellings work too); op names, input size and
labels default to the export's `<graph>.meta.json`. Results go to stdout (text, `--quiet` top-1 lines
or `--json` lines), warnings to stderr. Exit 0 when every image was classified, 5 when some could not
be read (the rest are still printed); see docs/label_image.md.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional

import click
from tqdm import tqdm

from retrainer.classify.config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_OUTPUT_LAYER,
    DEFAULT_TOP_K,
    ClassifyConfig,
)
from retrainer.cli import (
    PathOrUrl,
    configure_logging,
    option,
    quiet_tensorflow,
    reports_errors,
    version_option,
)
from retrainer.data.names import image_extensions_text, is_image_name
from retrainer.errors import UnreadableImagesError, UsageError
from retrainer.formats.graph_contract import (
    DEFAULT_GRAPH,
    INPUT_MEAN,
    INPUT_OP,
    INPUT_STD,
    LABELS_FILENAME,
)
from retrainer.io.storage import walk

if TYPE_CHECKING:
    from retrainer.classify.run import ImageResult

log = logging.getLogger(__name__)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@version_option("label-image")
@click.argument("images", nargs=-1, type=PathOrUrl())
@click.option("--image", "more_images", multiple=True, type=PathOrUrl(),
              help="Image file or folder to classify (repeatable; same as a positional IMAGE).")
@option("graph", type=PathOrUrl(), default=DEFAULT_GRAPH, show_default=True,
        help="Model written by retrain: a frozen graph (.pb), a .tflite file, an ONNX model "
             "or a SavedModel folder (told apart by content).")
@option("labels", type=PathOrUrl(), default=None,
         help="Labels file, one per line.  [default: the labels in <graph>.meta.json, else "
              f"{LABELS_FILENAME} next to the graph]")
@option("input_layer", default=None,
         help=f"Input op name.  [default: from <graph>.meta.json, else {INPUT_OP}]")
@option("output_layer", default=None,
         help=f"Output op name.  [default: from <graph>.meta.json, else {DEFAULT_OUTPUT_LAYER}]")
@option("input_height", type=click.IntRange(min=1), default=None,
         help="Input height in pixels.  [default: from <graph>.meta.json, else the graph's input shape]")
@option("input_width", type=click.IntRange(min=1), default=None,
         help="Input width in pixels.  [default: from <graph>.meta.json, else the graph's input shape]")
@option("input_mean", type=float, default=None,
         help=f"The graph is fed (pixel - input_mean) / input_std, pixels 0..255.  "
              f"[default: from <graph>.meta.json, else {INPUT_MEAN:g}]")
@option("input_std", type=float, default=None,
         help=f"See --input_mean.  [default: from <graph>.meta.json, else {INPUT_STD:g}]")
@option("top_k", type=click.IntRange(min=1), default=DEFAULT_TOP_K, show_default=True,
         help="Labels to print per image.")
@option("batch_size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE, show_default=True,
         help="Images per model run.")
@option("explain", type=PathOrUrl(), default=None, metavar="DIR",
        help="Write each image's heat map (Grad-CAM: where the top class's evidence lies) to "
             "DIR/<image name>.png. Frozen graphs and SavedModels of the built-in "
             "EfficientNet-Lite models and keras: backbones.")
@option("trust_model", is_flag=True,
         help="Load the model without checking its ops first: only for a file you trust "
              "(docs/security.md).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per image and line: path, label, score, predictions (or error); "
                   "a multi-label model's: path, labels (those over their thresholds), predictions; "
                   "with --explain also heatmap and peak [y, x].")
@click.option("--reject", is_flag=True,
              help="Say 'unknown' for images unlike anything the model was trained on (its novelty "
                   "score above the threshold stored at export); --json adds \"unknown\" and "
                   "\"novelty\" to each object.")
@click.option("--quiet", "-q", is_flag=True,
              help="Only the top-1 per image: 'label<TAB>score', prefixed by 'path<TAB>' when several "
                   "images are given. No warnings.")
@reports_errors
def main(images: tuple[Path, ...], more_images: tuple[Path, ...], graph: Path, labels: Optional[Path],
         input_layer: Optional[str], output_layer: Optional[str], input_height: Optional[int],
         input_width: Optional[int], input_mean: Optional[float], input_std: Optional[float], top_k: int,
         batch_size: int, explain: Optional[Path], trust_model: bool, as_json: bool, reject: bool,
         quiet: bool) -> None:
    """Classify IMAGE files (and image files found in folders, recursively) with a retrained graph.

    \b
    Examples:
      label-image --graph retrain_output/output_graph.pb photo.jpg
      label-image --graph out.pb --json photos/ > labels.jsonl
      label-image --graph out.pb --quiet photo.jpg     # -> roses<TAB>0.97312
      label-image --graph out.pb --reject photo.jpg    # -> unknown (roses 0.41210)
      label-image --graph out.pb --explain heatmaps/ photo.jpg

    A multi-label model prints every label over its threshold, one 'label score' line each.
    """
    if as_json and quiet:
        raise click.UsageError("--json and --quiet are alternatives; pass one of them")
    configure_logging("error" if quiet else "warning")
    quiet_tensorflow()
    from retrainer.classify.run import classify_images  # TensorFlow: not for --help

    paths = expand_images(images + more_images)
    config = ClassifyConfig(
        graph=graph, labels=labels, input_layer=input_layer, output_layer=output_layer,
        input_height=input_height, input_width=input_width, input_mean=input_mean, input_std=input_std,
        top_k=top_k, batch_size=batch_size, explain_dir=explain, trust_model=trust_model,
    )
    several = len(paths) > 1
    unreadable: list[ImageResult] = []
    printed = 0
    for result in _with_progress(classify_images(config, paths), len(paths), quiet):
        if result.error is not None:
            unreadable.append(result)
            log.warning("cannot read %s: %s", result.path, result.error)
        elif reject and result.unknown is None:
            raise UsageError(f"--reject needs a model with a novelty output; {graph} has none "
                             "(export it again with this version of retrain)")
        if as_json:
            click.echo(json.dumps(_as_json(result, reject)))
        elif result.error is None:
            click.echo(_as_text(result, several, quiet, first=printed == 0, reject=reject))
            printed += 1
    if unreadable:
        raise UnreadableImagesError(_unreadable_summary(unreadable, len(paths)))


def expand_images(arguments: Iterable[Path]) -> list[Path]:
    """Files as given (missing ones are reported per image later); folders -> their image files.

    Folders are searched recursively for files with an image extension, skipping hidden entries,
    sorted by path within each folder.
    """
    paths: list[Path] = []
    for argument in arguments:
        if not argument.is_dir():
            paths.append(argument)
            continue
        found = []
        for folder, subfolders, files in walk(argument):
            subfolders[:] = [name for name in subfolders if not name.startswith(".")]
            found += [f"{folder}/{name}" if folder else name for name in files if is_image_name(name)]
        if not found:
            raise UsageError(f"no image files ({image_extensions_text()}) in folder {argument}")
        paths += [argument / relpath for relpath in sorted(found, key=lambda path: path.split("/"))]
    if not paths:
        raise UsageError(
            "no images given; pass image files or folders, e.g. label-image --graph out.pb photo.jpg"
        )
    return paths


def _unreadable_summary(unreadable: list[ImageResult], total: int) -> str:
    first = unreadable[0]
    if total == 1:
        return f"cannot read {first.path}: {first.error}"
    classified = f"the other {total - len(unreadable)} were classified"
    if len(unreadable) == 1:
        return f"cannot read {first.path}: {first.error}; {classified}"
    return (f"cannot read {len(unreadable)} of {total} images (first: {first.path}: {first.error}); "
            f"{classified}")


def _as_text(result: ImageResult, several: bool, quiet: bool, first: bool,
             reject: bool = False) -> str:
    """label_image.py's 'label score' lines; a '==> path <==' header (as `head`) when several images.

    A multi-label model's lines are its labels over their thresholds; with --reject an unknown
    image is one 'unknown (label score)' line naming the top label.
    """
    best = result.predictions[0]
    unknown = reject and bool(result.unknown)
    shown = result.predictions if result.labels is None else result.labels
    if quiet:
        if unknown:
            top1 = f"unknown\t{best.score:.5f}"
        elif result.labels is not None:
            top1 = (";".join(p.label for p in shown) + "\t"
                    + ";".join(f"{p.score:.5f}" for p in shown))
        else:
            top1 = f"{best.label}\t{best.score:.5f}"
        return f"{result.path}\t{top1}" if several else top1
    if unknown:
        lines = [f"unknown ({best.label} {best.score:.5f})"]
    elif shown:
        lines = [f"{prediction.label} {prediction.score:.5f}" for prediction in shown]
    else:
        lines = [f"(no label over its threshold; top: {best.label} {best.score:.5f})"]
    if result.heatmap is not None and result.peak is not None:
        lines.append(f"heat map: {result.heatmap} (peak y={result.peak[0]}, x={result.peak[1]})")
    if several:
        lines.insert(0, ("" if first else "\n") + f"==> {result.path} <==")
    return "\n".join(lines)


def _as_json(result: ImageResult, reject: bool = False) -> dict[str, Any]:
    if result.error is not None:
        return {"path": str(result.path), "error": result.error}
    best = result.predictions[0]
    document: dict[str, Any] = {"path": str(result.path)}
    if result.labels is None:
        document.update(label=best.label, score=best.score)
    else:
        document["labels"] = [{"label": p.label, "score": p.score} for p in result.labels]
    document["predictions"] = [{"label": p.label, "score": p.score} for p in result.predictions]
    if reject:
        document.update(unknown=result.unknown, novelty=result.novelty)
    if result.heatmap is not None and result.peak is not None:
        document["heatmap"] = str(result.heatmap)
        document["peak"] = list(result.peak)
    return document


def _with_progress(results: Iterator[ImageResult], total: int, quiet: bool
                   ) -> Iterable[ImageResult]:
    """A tqdm bar on stderr, only when results go to a file or pipe and stderr is a terminal."""
    if quiet or sys.stdout.isatty() or total <= DEFAULT_BATCH_SIZE:
        return results
    return tqdm(results, total=total, unit="image", file=sys.stderr, disable=None)


if __name__ == "__main__":
    main()
