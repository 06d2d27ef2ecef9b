"""Classification stage: an exported frozen graph + image files -> top-k (label, score) per image.

The graph is parsed and loaded into one TF1 Session once per run (measured against
`wrap_function` + `prune`: same steady-state speed, but load + first batch took 0.4 s instead of
0.7-1.5 s on a MobileNetV2-size graph). Images are
decoded by `retrainer.images.load_image` -- the pixels training saw -- on a thread pool that works a
couple of batches ahead of the model, so decoding overlaps inference. An image that cannot be decoded
becomes a result with an `error`; the others are still classified.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional

import numpy as np

from retrainer._frozen_graph import load_frozen_graph, read_graph_file
from retrainer.errors import ModelError, UsageError
from retrainer.graph_contract import (
    GRAPH_FORMAT,
    INPUT_MEAN,
    INPUT_OP,
    INPUT_STD,
    METADATA_SUFFIX,
    metadata_path,
)
from retrainer.images import UnreadableImageError, load_image
from retrainer.pipeline import RetrainConfig

if TYPE_CHECKING:
    import tensorflow as tf

# retrain's defaults, so that `label-image photo.jpg` finds what a plain `retrain` wrote.
DEFAULT_GRAPH: Path = RetrainConfig.output_graph
DEFAULT_OUTPUT_LAYER: str = RetrainConfig.final_tensor_name
LABELS_FILENAME: str = RetrainConfig.output_labels.name  # looked for next to the graph
DEFAULT_TOP_K = 5
DEFAULT_BATCH_SIZE = 32

# (path, uint8 [H, W, 3] pixels or None, why it could not be decoded or None)
_Decoded = tuple[Path, Optional[np.ndarray], Optional[str]]


@dataclasses.dataclass(frozen=True)
class ClassifyConfig:
    """What the user asked for. None = take it from the sidecar, else the graph, else the default.

    Attributes:
        graph: frozen GraphDef (.pb) written by `retrain`, or any graph with a [N, H, W, 3] input.
        labels: labels file, one per line in class-index order.
        input_layer / output_layer: op (or tensor, "name:0") names in the graph.
        input_height / input_width: pixels the graph's input expects.
        input_mean / input_std: the graph is fed (uint8 pixel - input_mean) / input_std.
        top_k: how many (label, score) pairs to return per image.
        batch_size: images per model run.
    """

    graph: Path
    labels: Optional[Path] = None
    input_layer: Optional[str] = None
    output_layer: Optional[str] = None
    input_height: Optional[int] = None
    input_width: Optional[int] = None
    input_mean: Optional[float] = None
    input_std: Optional[float] = None
    top_k: int = DEFAULT_TOP_K
    batch_size: int = DEFAULT_BATCH_SIZE

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
    """How to feed the loaded graph and name its outputs, after flags, sidecar and graph are merged."""

    input_layer: str
    output_layer: str
    input_size: tuple[int, int]  # (height, width)
    input_mean: float
    input_std: float
    labels: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Prediction:
    label: str
    score: float


@dataclasses.dataclass(frozen=True)
class ImageResult:
    """One input's outcome: `predictions` best first, or `error` (why it could not be decoded)."""

    path: Path
    predictions: tuple[Prediction, ...] = ()
    error: Optional[str] = None


def classify_images(config: ClassifyConfig, paths: Iterable[Path]) -> Iterator[ImageResult]:
    """Load the graph once and classify every image, yielding results in input order as batches finish.

    Args:
        config: the graph and how to read it.
        paths: image files.

    Yields:
        One ImageResult per path, in order.

    Raises:
        UsageError: missing graph or labels file, sizes that contradict the graph.
        ModelError: corrupt graph or sidecar, unknown op name, labels count != output width.
    """
    with Classifier(config) as classifier:
        yield from classifier.classify_files(paths)


class Classifier:
    """A frozen graph loaded into a Session once, ready to classify any number of images."""

    def __init__(self, config: ClassifyConfig) -> None:
        import tensorflow as tf

        self.config = config
        data = read_graph_file(config.graph)
        sidecar = read_sidecar(config.graph, hashlib.sha256(data).hexdigest())
        frozen = load_frozen_graph(
            config.graph,
            data,
            config.input_layer or sidecar.get("input_layer") or INPUT_OP,
            config.output_layer or sidecar.get("output_layer") or DEFAULT_OUTPUT_LAYER,
        )
        self._input, self._output = frozen.input, frozen.output
        labels, self._labels_source = _labels(config, sidecar)
        self.spec = ModelSpec(
            input_layer=self._input.op.name,
            output_layer=self._output.op.name,
            input_size=_input_size(config, sidecar, self._input),
            input_mean=_first_set(config.input_mean, sidecar.get("input_mean"), INPUT_MEAN),
            input_std=_first_set(config.input_std, sidecar.get("input_std"), INPUT_STD),
            labels=labels,
        )
        classes = self._output.shape[-1]
        if classes is not None:
            self._check_class_count(classes)
        self._session = tf.compat.v1.Session(graph=frozen.graph)

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    def scores(self, pixels: np.ndarray) -> np.ndarray:
        """Run the graph on decoded images.

        Args:
            pixels: uint8 [N, H, W, 3] RGB, (H, W) == spec.input_size.

        Returns:
            float32 [N, C] scores (softmax probabilities for graphs from `retrain`), C == len(labels).
        """
        feed = (pixels.astype(np.float32) - self.spec.input_mean) / self.spec.input_std
        scores = self._session.run(self._output, {self._input: feed})
        self._check_class_count(scores.shape[-1])
        return scores

    def classify_files(self, paths: Iterable[Path]) -> Iterator[ImageResult]:
        """Decode (in parallel) and classify, `batch_size` images per model run.

        Yields:
            One ImageResult per path, in input order; undecodable files carry `error`.
        """
        pending: list[_Decoded] = []
        decoded = 0
        for path, pixels, error in self._decode_ahead(paths):
            pending.append((path, pixels, error))
            decoded += pixels is not None
            if decoded == self.config.batch_size:
                yield from self._finish(pending)
                pending, decoded = [], 0
        yield from self._finish(pending)

    def _decode_ahead(self, paths: Iterable[Path]) -> Iterator[_Decoded]:
        """(path, pixels or None, error or None) in input order, decoding up to 2 batches ahead."""
        lookahead = 2 * self.config.batch_size
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            queue: deque[tuple[Path, Future[np.ndarray]]] = deque()
            for path in paths:
                queue.append((path, pool.submit(load_image, path, self.spec.input_size)))
                if len(queue) >= lookahead:
                    yield _result_of(*queue.popleft())
            while queue:
                yield _result_of(*queue.popleft())

    def _finish(self, pending: list[_Decoded]) -> Iterator[ImageResult]:
        images = [pixels for _, pixels, _ in pending if pixels is not None]
        scores = iter(self.scores(np.stack(images)) if images else [])
        for path, pixels, error in pending:
            if pixels is None:
                yield ImageResult(path=path, error=error)
            else:
                yield ImageResult(path=path, predictions=self._top_k(next(scores)))

    def _top_k(self, scores: np.ndarray) -> tuple[Prediction, ...]:
        best = np.argsort(-scores, kind="stable")[: self.config.top_k]
        return tuple(Prediction(self.spec.labels[index], float(scores[index])) for index in best)

    def _check_class_count(self, classes: int) -> None:
        if classes != len(self.spec.labels):
            raise ModelError(
                f"graph {self.config.graph}'s output {self.spec.output_layer!r} scores {classes} "
                f"classes, but {self._labels_source} lists {len(self.spec.labels)} labels; pass the "
                "labels file written together with this graph (--labels)"
            )


def read_sidecar(graph: Path, graph_sha256: str) -> dict[str, Any]:
    """The export's `<graph>.meta.json` as a dict, or {} when there is none.

    Args:
        graph: the .pb file.
        graph_sha256: hex SHA-256 of the graph's bytes, checked against the sidecar's.

    Raises:
        ModelError: the sidecar exists but is not valid JSON or not a format this version reads, or
            it belongs to another version of the graph (its "graph_sha256" differs).
    """
    path = metadata_path(graph)
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(
            f"cannot read metadata {path}: {error}; fix or delete it (flags can replace it)"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != GRAPH_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ModelError(
            f"metadata {path} has format {found!r}, expected {GRAPH_FORMAT!r}; "
            "delete it and pass --input_layer, --output_layer and --labels instead"
        )
    expected = meta.get("graph_sha256")
    if expected is not None and expected != graph_sha256:
        raise ModelError(
            f"metadata {path} describes another version of {graph} (an interrupted export, or a "
            "graph copied without its metadata), so its labels may not match; rerun retrain, or "
            "copy the graph together with its metadata"
        )
    return meta


def read_labels(path: Path) -> tuple[str, ...]:
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


def _input_size(config: ClassifyConfig, sidecar: dict[str, Any], tensor: "tf.Tensor") -> tuple[int, int]:
    """Flags, else sidecar, else the graph's static input shape; flags must agree with the graph."""
    graph_size = tuple(tensor.shape)[1:3] if tensor.shape.rank == 4 else (None, None)
    size = []
    flags = (config.input_height, config.input_width)
    for axis, flag, graph_value in zip(("height", "width"), flags, graph_size):
        value = _first_set(flag, sidecar.get(f"input_{axis}"), graph_value)
        if value is None:
            raise UsageError(
                f"graph {config.graph} accepts images of any {axis} and has no {METADATA_SUFFIX} "
                f"sidecar; pass --input_{axis}"
            )
        if graph_value is not None and value != graph_value:
            raise UsageError(
                f"graph {config.graph}'s input {tensor.name} takes {axis} {graph_value}, but "
                f"input_{axis} is {value}; drop --input_{axis} to use the graph's size"
            )
        size.append(int(value))
    return size[0], size[1]


def _labels(config: ClassifyConfig, sidecar: dict[str, Any]) -> tuple[tuple[str, ...], str]:
    """(labels, their source): --labels, else the sidecar's, else output_labels.txt beside the graph."""
    if config.labels is not None:
        return read_labels(config.labels), f"labels file {config.labels}"
    if sidecar.get("labels"):
        labels = tuple(str(label) for label in sidecar["labels"])
        return labels, f"metadata {config.graph}{METADATA_SUFFIX}"
    beside = config.graph.parent / LABELS_FILENAME
    if beside.is_file():
        return read_labels(beside), f"labels file {beside}"
    raise UsageError(
        f"no labels for graph {config.graph}: it has no {METADATA_SUFFIX} sidecar and there is no "
        f"{LABELS_FILENAME} next to it; pass --labels FILE"
    )


def _result_of(path: Path, future: "Future[np.ndarray]") -> _Decoded:
    try:
        return path, future.result(), None
    except UnreadableImageError as error:
        return path, None, error.reason


def _first_set(*values):
    return next((value for value in values if value is not None), None)
