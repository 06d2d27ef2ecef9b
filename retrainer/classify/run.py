"""Classification: an exported model + image files -> top-k (label, score) per image.

`--graph` may be a frozen GraphDef (.pb), a `.tflite` file, an ONNX model or a SavedModel folder;
the content decides (a `.tflite` has the "TFL3" identifier at bytes 4..8, an ONNX model starts with
its IR version, a SavedModel folder holds saved_model.pb), one module per kind. Images are decoded
by `retrainer.data.decoding.load_image` -- the pixels training saw -- on a thread pool that works a
couple of batches ahead of the model, so decoding overlaps inference. An image that cannot be
decoded becomes a result with an `error`; the others are still classified.
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Protocol

import numpy as np

from retrainer.classify.config import (
    ClassifyConfig,
    ModelSpec,
)
from retrainer.classify.explained import ExplainedModel, HeatmapWriter
from retrainer.classify.frozen_graph import FrozenGraphModel
from retrainer.classify.onnx import OnnxModel
from retrainer.classify.saved_model import SIGNATURE, SavedModelModel
from retrainer.classify.tflite import TFLiteModel
from retrainer.data.decoding import UnreadableImageError, load_image
from retrainer.errors import ModelError, UsageError
from retrainer.formats.frozen_graph import read_graph_file
from retrainer.formats.graph_contract import (
    SAVED_MODEL_FILE,
    TFLITE_IDENTIFIER,
    looks_like_onnx,
)
from retrainer.security import check_model

# (path, uint8 [H, W, 3] pixels or None, why it could not be decoded or None)
_Decoded = tuple[Path, Optional[np.ndarray], Optional[str]]


class Model(Protocol):
    """One loaded artifact of any kind."""

    kind: str
    spec: ModelSpec
    labels_source: str

    @property
    def classes(self) -> Optional[int]:
        """The output width when known before running (read-only: any int or None will do)."""

    def outputs(self, pixels: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]: ...

    def close(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class Prediction:
    label: str
    score: float


@dataclasses.dataclass(frozen=True)
class ImageResult:
    """One input's outcome: `predictions` best first, or `error` (why it could not be decoded).

    Attributes:
        labels: a multi-label model's labels at or over their thresholds, best first (None for
            a single-label model).
        novelty: the novelty score (None when the model has none).
        unknown: novelty above the model's threshold (None when the model has no novelty).
        heatmap: with --explain, the picture written for it.
        peak: with --explain, the heat map's maximum as (y, x) in the image's own pixels.
    """

    path: Path
    predictions: tuple[Prediction, ...] = ()
    error: Optional[str] = None
    labels: Optional[tuple[Prediction, ...]] = None
    novelty: Optional[float] = None
    unknown: Optional[bool] = None
    heatmap: Optional[Path] = None
    peak: Optional[tuple[int, int]] = None


def open_model(config: ClassifyConfig) -> Model:
    """Check, then load `config.graph` as whichever kind its content says.

    Raises:
        UsageError: missing file, a folder that is not a SavedModel, flags that contradict it.
        UntrustedModelError: the model failed `retrainer.security.check_model` (unless trusted).
        ModelError: corrupt or truncated model.
    """
    path = config.graph
    if path.is_dir():
        if not (path / SAVED_MODEL_FILE).is_file():
            raise UsageError(
                f"--graph {path} is a folder without {SAVED_MODEL_FILE}; pass a frozen graph "
                "(.pb), a .tflite file or a SavedModel folder (retrain --saved_model_dir)"
            )
        check_model(path, "saved_model", trust=config.trust_model, signature=SIGNATURE)
        return SavedModelModel(config)
    data = read_graph_file(path)
    if data[4:8] == TFLITE_IDENTIFIER:
        check_model(path, "tflite", trust=config.trust_model)
        return TFLiteModel(config, data)
    if looks_like_onnx(data):
        return OnnxModel(config, data)  # it checks the model before ONNX Runtime sees it
    check_model(path, "graph", trust=config.trust_model)
    return FrozenGraphModel(config)


def classify_images(config: ClassifyConfig, paths: Iterable[Path]) -> Iterator[ImageResult]:
    """Load the model once and classify every image, yielding results in input order as batches finish.

    Args:
        config: the model and how to read it.
        paths: image files.

    Yields:
        One ImageResult per path, in order.

    Raises:
        UsageError: missing model or labels file, sizes that contradict the model.
        ModelError: corrupt model or sidecar, unknown op name, labels count != output width.
    """
    with Classifier(config) as classifier:
        yield from classifier.classify_files(paths)


class Classifier:
    """A model loaded once, ready to classify any number of images."""

    def __init__(self, config: ClassifyConfig) -> None:
        self.config = config
        self.model: Model = open_model(config)
        self._explained: Optional[ExplainedModel] = None
        self._heatmaps: Optional[HeatmapWriter] = None
        if config.explain_dir is not None:
            self.model = self._explained = ExplainedModel(config, self.model)
            self._heatmaps = HeatmapWriter(config.explain_dir)
        self.spec = self.model.spec
        if self.model.classes is not None:
            self._check_class_count(self.model.classes)

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        self.model.close()

    def scores(self, pixels: np.ndarray) -> np.ndarray:
        """Run the model on decoded images.

        Args:
            pixels: uint8 [N, H, W, 3] RGB, (H, W) == spec.input_size.

        Returns:
            float32 [N, C] scores (softmax probabilities for models from `retrain`; one sigmoid
            per label for multi-label ones), C == len(labels).
        """
        return self.outputs(pixels)[0]

    def outputs(self, pixels: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """`scores`, and float32 [N] novelty scores when the model has them (else None)."""
        scores, novelty = self.model.outputs(pixels)
        self._check_class_count(scores.shape[-1])
        return scores, novelty

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
        maps: Iterator[np.ndarray] = iter(())
        scores: Optional[np.ndarray] = None
        novelty: Optional[np.ndarray] = None
        if self._explained is not None and images:
            explanation = self._explained.explain(np.stack(images))
            self._check_class_count(explanation.probabilities.shape[-1])
            scores, novelty = explanation.probabilities, explanation.novelty
            maps = iter(explanation.maps)
        elif images:
            scores, novelty = self.outputs(np.stack(images))
        row = 0
        for path, pixels, error in pending:
            if pixels is None or scores is None:
                yield ImageResult(path=path, error=error)
                continue
            result = self._result(path, scores[row], None if novelty is None else novelty[row])
            row += 1
            if self._heatmaps is not None:
                result = self._heatmaps.write(result, next(maps))
            yield result

    def _result(self, path: Path, scores: np.ndarray, novelty: Optional[float]) -> ImageResult:
        predictions, labels, unknown = judge(self.spec, scores, novelty, self.config.top_k)
        return ImageResult(path=path, predictions=predictions, labels=labels,
                           novelty=None if novelty is None else float(novelty), unknown=unknown)

    def _check_class_count(self, classes: int) -> None:
        if classes != len(self.spec.labels):
            raise ModelError(
                f"{self.model.kind} {self.config.graph}'s output {self.spec.output_layer!r} scores "
                f"{classes} classes, but {self.model.labels_source} lists {len(self.spec.labels)} "
                "labels; pass the labels file written together with this graph (--labels)"
            )


def judge(spec: ModelSpec, scores: np.ndarray, novelty: Optional[float], top_k: int
          ) -> tuple[tuple[Prediction, ...], Optional[tuple[Prediction, ...]], Optional[bool]]:
    """One image's answer from its scores (float [C]) and novelty score.

    Returns:
        (the top_k predictions, best first; a multi-label model's labels at or over their
        thresholds, best first, else None; whether the novelty is over the model's threshold,
        None when the model has no novelty output).
    """
    order = np.argsort(-scores, kind="stable")
    ranked = [Prediction(spec.labels[index], float(scores[index])) for index in order]
    labels = None
    if spec.thresholds is not None:
        labels = tuple(prediction for index, prediction in zip(order, ranked)
                       if prediction.score >= spec.thresholds[index])
    unknown = None
    if novelty is not None and spec.novelty_threshold is not None:
        unknown = bool(novelty > spec.novelty_threshold)
    return tuple(ranked[:top_k]), labels, unknown


def _result_of(path: Path, future: "Future[np.ndarray]") -> _Decoded:
    try:
        return path, future.result(), None
    except UnreadableImageError as error:
        return path, None, error.reason
