"""What every model kind of `label-image` shares: the config, the resolved spec, label files.

Kept free of TensorFlow so the CLI can import it for `--help`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Optional, Sequence, TypeVar

from retrainer.errors import ModelError, UsageError
from retrainer.formats.graph_contract import LABELS_FILENAME, OUTPUT_OP
from retrainer.io.storage import AnyPath, as_path

T = TypeVar("T")
DEFAULT_OUTPUT_LAYER = OUTPUT_OP
DEFAULT_TOP_K = 5
DEFAULT_BATCH_SIZE = 32


@dataclasses.dataclass(frozen=True)
class ClassifyConfig:
    """What the user asked for. None = take it from the model's metadata, else the default.

    Attributes:
        graph: a frozen GraphDef (.pb), a .tflite file or a SavedModel folder written by `retrain`
            (told apart by content), or any frozen graph with a [N, H, W, 3] input.
        labels: labels file, one per line in class-index order.
        input_layer / output_layer: op (or tensor, "name:0") names in a frozen graph.
        input_height / input_width: pixels the model's input expects.
        input_mean / input_std: a float model is fed (uint8 pixel - input_mean) / input_std.
        top_k: how many (label, score) pairs to return per image.
        batch_size: images per model run.
        explain_dir: write each image's Grad-CAM heat map here (`retrainer.classify.explained`).
        trust_model: load the model without `retrainer.security.check_model` (docs/security.md).
    """

    graph: AnyPath
    labels: Optional[AnyPath] = None
    input_layer: Optional[str] = None
    output_layer: Optional[str] = None
    input_height: Optional[int] = None
    input_width: Optional[int] = None
    input_mean: Optional[float] = None
    input_std: Optional[float] = None
    top_k: int = DEFAULT_TOP_K
    batch_size: int = DEFAULT_BATCH_SIZE
    explain_dir: Optional[Path] = None
    trust_model: bool = False

    def __post_init__(self) -> None:
        for name in ("top_k", "batch_size", "input_height", "input_width"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name} must be at least 1. Received: {name}={value}")
        if self.input_std is not None and (self.input_std == 0 or not math.isfinite(self.input_std)):
            raise UsageError(
                f"--input_std must be a non-zero number. Received: input_std={self.input_std}"
            )
        if self.input_mean is not None and not math.isfinite(self.input_mean):
            raise UsageError(
                f"--input_mean must be a finite number. Received: input_mean={self.input_mean}"
            )


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How to feed the loaded model and name its outputs, after flags and metadata are merged."""

    input_layer: str
    output_layer: str
    input_size: tuple[int, int]  # (height, width)
    input_mean: float
    input_std: float
    labels: tuple[str, ...]
    thresholds: Optional[tuple[float, ...]] = None  # a multi-label model's, one per label
    novelty_threshold: Optional[float] = None  # set when the model has a `novelty` output

    @property
    def multi_label(self) -> bool:
        return self.thresholds is not None


def read_labels(path: AnyPath) -> tuple[str, ...]:
    """Labels file -> labels in class-index order (one per line, trailing blank lines ignored).

    Raises:
        UsageError: the file is missing or unreadable.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise UsageError(f"cannot read labels file {path}: {reason}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    return tuple(line.rstrip() for line in lines)


def resolve_labels(config: ClassifyConfig, embedded: Optional[Sequence[str]], embedded_source: str,
                   kind: str, lacking: str) -> tuple[tuple[str, ...], str]:
    """(labels, where they came from): --labels, else the model's own (`embedded`), else
    output_labels.txt beside the model.

    Args:
        embedded: the labels the model file or its sidecar carries; None or empty: none.
        embedded_source: how to name that source in messages.
        kind / lacking: for the error, e.g. "graph" and "no .meta.json sidecar".

    Raises:
        UsageError: no labels anywhere, saying how to pass them.
    """
    if config.labels is not None:
        return read_labels(config.labels), f"labels file {config.labels}"
    if embedded:
        return tuple(str(label) for label in embedded), embedded_source
    beside = as_path(config.graph).parent / LABELS_FILENAME
    if beside.is_file():
        return read_labels(beside), f"labels file {beside}"
    raise UsageError(
        f"no labels for {kind} {config.graph}: it has {lacking} and there is no "
        f"{LABELS_FILENAME} next to it; pass --labels FILE"
    )


def check_size_flags(config: ClassifyConfig, model_size: tuple[int, int], what: str) -> None:
    """--input_height/--input_width, when given, must equal the model's fixed input size.

    Raises:
        UsageError: naming the model's size and the fix.
    """
    for axis, flag, value in zip(("height", "width"), (config.input_height, config.input_width),
                                 model_size):
        if flag is not None and flag != value:
            raise UsageError(
                f"{what} {config.graph} takes {model_size[0]}x{model_size[1]} images (height x "
                f"width), but --input_{axis} is {flag}; its input size is fixed at export (the "
                f"extractor's size): drop --input_{axis}, or retrain with --image_size {flag}"
            )


def retrainer_extras(metadata: Any, labels: tuple[str, ...], source: str
                     ) -> tuple[Optional[tuple[float, ...]], Optional[float]]:
    """(per-label thresholds, novelty threshold) from the "multi_label" / "novelty" entries of an
    export's metadata (None where absent).

    Raises:
        ModelError: the entries are malformed or name other labels.
    """
    if not isinstance(metadata, dict):
        return None, None
    thresholds = novelty = None
    try:
        if "multi_label" in metadata:
            named = metadata["multi_label"]["thresholds"]
            # By name; by position when --labels renamed them (same count, same order).
            values = (list(named.values()) if len(named) == len(labels) else
                      [named[label] for label in labels])
            thresholds = tuple(float(named.get(label, value))
                               for label, value in zip(labels, values))
        if "novelty" in metadata:
            novelty = float(metadata["novelty"]["threshold"])
    except (KeyError, TypeError, ValueError) as error:
        raise ModelError(f"{source} has malformed thresholds ({type(error).__name__}: {error}); "
                         "export the model again, or pass --labels for its own labels") from None
    return thresholds, novelty


def first_set(*values: Optional[T]) -> Optional[T]:
    """The first value that is not None (a flag, else the metadata, else the graph's), or None."""
    return next((value for value in values if value is not None), None)


def flag_or(default: T, *values: Optional[T]) -> T:
    """The first of `values` that is not None (a flag, else the metadata), else `default`."""
    found = first_set(*values)
    return default if found is None else found
