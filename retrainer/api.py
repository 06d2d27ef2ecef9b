"""The Python API, for notebooks and scripts: `retrain` a classifier, `load` a model, `predict`.

    import retrainer
    result = retrainer.retrain("flower_photos", how_many_training_steps=200)
    model = retrainer.load(result.outputs["output_graph"])
    model.predict(["photo.jpg"])[0].label

`retrain` takes the `retrain` command's flags as keyword arguments (underscore spelling, the same
defaults and the same checks) and runs the same pipeline. `load` opens any model `retrain` exports
through the code `label-image` uses -- the model file is checked before anything in it runs
(docs/security.md) -- and image files are decoded exactly as `label-image` decodes them, so both
give the same answers. Errors are the `retrainer.errors` classes. docs/python.md has a walk-through.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import io
import os
import types
import typing
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
from PIL import Image

from retrainer.classify.config import DEFAULT_BATCH_SIZE, DEFAULT_TOP_K, ClassifyConfig
from retrainer.classify.run import Classifier, judge
from retrainer.config import (
    FLAG_ALIASES,
    UNSUPPORTED_FLAGS,
    RetrainConfig,
    unsupported_flag_error,
)
from retrainer.data.decoding import UnreadableImageError, decode_image, load_image
from retrainer.errors import UnreadableImagesError, UsageError
from retrainer.io.storage import as_path
from retrainer.pipeline import run
from retrainer.result import RetrainResult

# What `Model.predict` takes: one image or a sequence of them.
ImageInput = Union[str, "os.PathLike[str]", Image.Image, np.ndarray]
# The command line's own switches, which the API replaces with return values and arguments.
_CLI_ONLY = {
    "json": "the API returns the result: use result.to_json()",
    "quiet": "pass show_progress=False",
    "logging_verbosity": "configure Python's logging, e.g. logging.basicConfig(level='INFO')",
    "version": "read retrainer.__version__",
}
_FIELDS = {field.name: field for field in dataclasses.fields(RetrainConfig)}


def retrain(image_dir: str | os.PathLike[str], **options: Any) -> RetrainResult:
    """Train a new classifier on `image_dir`'s class folders and export it, as `retrain` does.

    Args:
        image_dir: folder with one sub-folder of images per class (`--image_dir`).
        **options: any `retrain` flag in underscore spelling, e.g. `how_many_training_steps=200`,
            `saved_model_dir="export/saved_model"`, `tflite_quantization=["none", "int8"]`;
            the same defaults and checks as the command line (docs/flags.md).
            `show_progress=False` hides the progress bars (shown with `tqdm.auto`, so they
            render in Jupyter).

    Returns:
        RetrainResult: `test_accuracy`, `history` (one point per evaluation step: `step`,
        `train_accuracy`, `cross_entropy`, `validation_accuracy`, ...), `labels`, `outputs`
        ({flag name: path written}) and `to_json()`, the metrics document (docs/reports.md).

    Raises:
        UsageError: an unknown option or a value that cannot work (before any work starts).
        DataError: the folder cannot give a classifier.
        ModelError: the extractor cannot be loaded (UntrustedModelError: refused by its check).
        QualityGateError, ExportMismatchError, ExportFailedError: the run finished, then failed
            a check you asked for; `error.result` is its RetrainResult.
    """
    return run(retrain_config(image_dir, **options))


def retrain_config(image_dir: str | os.PathLike[str], **options: Any) -> RetrainConfig:
    """The RetrainConfig `retrain(image_dir, **options)` runs: names and types checked.

    Raises:
        UsageError: an unknown name (with the closest flag), a value of the wrong type, or
            anything RetrainConfig refuses.
    """
    fields: dict[str, Any] = {}
    for name, value in options.items():
        field = FLAG_ALIASES.get(name, name)
        if field in fields:
            raise UsageError(f"{name}= and {field}= set the same option; pass one of them.")
        _check_name(field)
        fields[field] = _converted(field, value)
    return RetrainConfig(image_dir=_converted("image_dir", image_dir), **fields)


def load(path: str | os.PathLike[str], labels: Optional[str | os.PathLike[str]] = None,
         trust_model: bool = False) -> "Model":
    """Load a model exported by `retrain`: a frozen graph (.pb), a .tflite, an .onnx or a
    SavedModel folder (told apart by content).

    Args:
        path: the model file or SavedModel folder (a URL such as gs://... works too).
        labels: a labels file, one per line; default: the labels the export carries, else
            output_labels.txt beside it (as `label-image --labels`).
        trust_model: load it without checking its ops first: only for a file you trust
            (docs/security.md).

    Returns:
        Model, with `labels`, `input_size` and `predict(images, top_k=5)`.

    Raises:
        UsageError: no such file, or no labels to be found.
        UntrustedModelError: the file failed the model check (an op that can act outside the
            model, such as reading or writing files); nothing in it ran.
        ModelError: a corrupt or truncated model, or labels that do not match its outputs.
    """
    config = ClassifyConfig(graph=as_path(path),
                            labels=None if labels is None else as_path(labels),
                            trust_model=trust_model)
    return Model(Classifier(config))


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One image's answer: the best `label` and its `score`, and the `top_k` (label, score)
    pairs, best first (scores are the model's probabilities).

    A multi-label model's `labels` are the (label, score) pairs at or over their thresholds, best
    first (None for a single-label model). `novelty` is how unlike the training images the image
    is and `unknown` whether that is over the model's threshold (`label-image --reject`); both
    None for a model without a novelty output.
    """

    label: str
    score: float
    top_k: list[tuple[str, float]]
    labels: Optional[list[tuple[str, float]]] = None
    novelty: Optional[float] = None
    unknown: Optional[bool] = None


class Model:
    """A model loaded once, for any number of `predict` calls. Use `close()` (or `with`) to free
    it early."""

    def __init__(self, classifier: Classifier) -> None:
        self._classifier = classifier

    @property
    def labels(self) -> tuple[str, ...]:
        """Class names, in the model's output order."""
        return self._classifier.spec.labels

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) every image is resized to."""
        return self._classifier.spec.input_size

    @property
    def kind(self) -> str:
        """Which kind of file it is: "graph", "TFLite model", "SavedModel" or "ONNX model"."""
        return self._classifier.model.kind

    def predict(self, images: ImageInput | Sequence[ImageInput],
                top_k: int = DEFAULT_TOP_K) -> list[Prediction]:
        """Classify images.

        Args:
            images: one image or a list of them; each a file path (decoded exactly as
                `label-image` decodes it), a PIL image (used as it is: its mode, transparency
                and EXIF orientation handled as for a file), or uint8 RGB pixels [H, W, 3]; or
                a uint8 array [N, H, W, 3] of N images. Any size: each is resized to
                `input_size` as files are.
            top_k: how many (label, score) pairs each Prediction keeps.

        Returns:
            One Prediction per image, in order.

        Raises:
            UsageError: an input that is not an image (e.g. float pixels), top_k < 1.
            UnreadableImagesError: a file that cannot be decoded (named in the message).
        """
        if top_k < 1:
            raise UsageError(f"top_k must be at least 1. Received: top_k={top_k}")
        pixels = self._pixels(list(_each_image(images)))
        predictions: list[Prediction] = []
        for start in range(0, len(pixels), DEFAULT_BATCH_SIZE):
            scores, novelty = self._classifier.outputs(pixels[start:start + DEFAULT_BATCH_SIZE])
            predictions += [self._prediction(row, None if novelty is None else float(novelty[n]),
                                             top_k) for n, row in enumerate(scores)]
        return predictions

    def close(self) -> None:
        self._classifier.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<retrainer.Model {self.kind} {self._classifier.config.graph}: "
                f"{len(self.labels)} labels, input {self.input_size[0]}x{self.input_size[1]}>")

    def _pixels(self, images: list[Any]) -> np.ndarray:
        """uint8 [N, H, W, 3] at input_size, files decoded on a thread pool."""
        size = self.input_size
        height, width = size
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            decoded = list(pool.map(lambda image: _decoded(image, size), images))
        if not decoded:
            return np.zeros((0, height, width, 3), np.uint8)
        return np.stack(decoded)

    def _prediction(self, scores: np.ndarray, novelty: Optional[float], top_k: int
                    ) -> Prediction:
        """label-image's answer (`classify.run.judge`): its order, ties included."""
        best, labels, unknown = judge(self._classifier.spec, scores, novelty, top_k)
        pairs = [(prediction.label, prediction.score) for prediction in best]
        return Prediction(pairs[0][0], pairs[0][1], pairs,
                          None if labels is None else [(p.label, p.score) for p in labels],
                          novelty, unknown)


def _each_image(images: Any) -> Iterator[Any]:
    """One input or a sequence of them -> the single images, in order."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        yield from images
    elif isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        yield images
    elif isinstance(images, (list, tuple)):
        for image in images:
            yield from (image if isinstance(image, np.ndarray) and image.ndim == 4 else [image])
    else:
        raise UsageError(f"images must be a path, a PIL image, a uint8 array or a list of them. "
                         f"Received: {type(images).__name__}")


def _decoded(image: Any, size: tuple[int, int]) -> np.ndarray:
    """One input -> uint8 [H, W, 3] at `size`, by `retrainer.data.decoding`'s rules."""
    if isinstance(image, (str, os.PathLike)):
        try:
            return load_image(as_path(image), size)
        except UnreadableImageError as error:
            raise UnreadableImagesError(f"cannot read {error.path}: {error.reason}") from None
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise UsageError(
                "an image array must be uint8 RGB pixels [H, W, 3] (or [N, H, W, 3]). "
                f"Received: {image.dtype} {list(image.shape)}; for floats in [0, 1] pass "
                "(array * 255).round().astype(np.uint8)")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise UsageError(f"each image must be a path, a PIL image or a uint8 array. "
                         f"Received: {type(image).__name__}")
    return decode_image(_lossless(image), size, "<PIL image>")


def _lossless(image: Image.Image) -> bytes:
    """`image` encoded without loss (PNG keeps mode, transparency and EXIF; TIFF the modes PNG
    lacks), so it is decoded by the very code files go through."""
    stream = io.BytesIO()
    try:
        image.save(stream, "PNG", compress_level=1, exif=image.getexif())
    except (OSError, KeyError, ValueError):
        stream = io.BytesIO()
        try:
            image.save(stream, "TIFF")
        except (OSError, KeyError, ValueError) as error:
            raise UsageError(f"cannot use a PIL image of mode {image.mode}: {error}; "
                             "convert it first, e.g. image.convert('RGB')") from None
    return stream.getvalue()


def _check_name(name: str) -> None:
    if name in _FIELDS:
        return
    if name in UNSUPPORTED_FLAGS:
        raise unsupported_flag_error(name)
    if name in _CLI_ONLY:
        raise UsageError(f"{name}= is a command-line switch; {_CLI_ONLY[name]}.")
    close = difflib.get_close_matches(name, [*_FIELDS, *FLAG_ALIASES], n=1)
    hint = f"; did you mean {close[0]}=?" if close else " (see docs/flags.md)"
    raise UsageError(f"retrain has no option {name}={hint}")


def _converted(name: str, value: Any) -> Any:
    """`value` as RetrainConfig's field `name` holds it (numpy scalars -> Python, a single string
    -> a one-item tuple for repeatable flags), or a UsageError saying what was expected."""
    hint = _hints()[name]
    converted = _as_type(hint, value)
    if converted is _INVALID:
        raise UsageError(f"{name}= must be {_describe(hint)}. Received: {value!r}.")
    return converted


_INVALID = object()


def _as_type(hint: Any, value: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        for arg in args:
            converted = _as_type(arg, value)
            if converted is not _INVALID:
                return converted
        return _INVALID
    if hint is type(None):
        return None if value is None else _INVALID
    if hint is bool:
        return bool(value) if isinstance(value, (bool, np.bool_)) else _INVALID
    if hint is int:
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
        return int(value) if ok else _INVALID
    if hint is float:
        ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
            value, (bool, np.bool_))
        return float(value) if ok else _INVALID
    if hint is str:
        return value if isinstance(value, str) else _INVALID
    if origin is tuple:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            return _INVALID
        converted = [_as_type(args[0], item) for item in items]
        return _INVALID if _INVALID in converted else tuple(converted)
    if isinstance(hint, type) and issubclass(hint, os.PathLike):  # Path or a remote path
        return value if isinstance(value, (str, os.PathLike)) else _INVALID  # as_path converts
    return value


def _describe(hint: Any) -> str:
    names = {bool: "True or False", int: "an integer", float: "a number", str: "a string",
             type(None): "None"}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(arg) for arg in args))
    if origin is tuple:
        return f"{_describe(args[0])} or a list of them"
    if isinstance(hint, type) and issubclass(hint, os.PathLike):
        return "a path"
    return names.get(hint, str(hint))


@functools.cache
def _hints() -> dict[str, Any]:
    """RetrainConfig's field types, resolved (its annotations are strings)."""
    return typing.get_type_hints(RetrainConfig)


__all__ = ["Model", "Prediction", "load", "retrain", "retrain_config"]
