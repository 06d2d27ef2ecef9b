"""`keras:<Name>` feature extractors: `keras.applications` backbones with global average pooling.

Handle grammar: `keras:<Name>[,alpha=<float>][,weights=imagenet|random|<file.h5>]`, name matched
case-insensitively. ImageNet weights come only from the Keras cache ($KERAS_HOME or ~/.keras, in
`models/`): this module never downloads, it says which file is missing and where to get it. Each
application's own `preprocess_input` (which expects [0, 255]) runs inside the extractor, so the
extractor keeps the [0, 1] input contract.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import os
from pathlib import Path
from typing import Any, Iterator, Optional

import tensorflow as tf

from retrainer.errors import ModelError, UsageError
from retrainer.extractors.base import ExtractorSpec, FeatureExtractor
from retrainer.extractors.registry import register_resolver

PREFIX = "keras:"
WEIGHT_CHOICES = ("imagenet", "random")  # or a path to a weights file
ALPHA_FAMILIES = ("mobilenet", "mobilenet_v2", "mobilenet_v3")
# Bump when the way vectors are computed from a backbone changes.
_WRAPPER_VERSION = b"keras-extractor/1"

# Application name -> (keras.applications submodule holding its `preprocess_input`, default input
# side length).
APPLICATIONS: dict[str, tuple[str, int]] = {
    **{f"ConvNeXt{size}": ("convnext", 224)
       for size in ("Tiny", "Small", "Base", "Large", "XLarge")},
    **{f"DenseNet{depth}": ("densenet", 224) for depth in (121, 169, 201)},
    **{
        f"EfficientNetB{i}": ("efficientnet", size)
        for i, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600))
    },
    **{
        f"EfficientNetV2{variant}": ("efficientnet_v2", size)
        for variant, size in (("B0", 224), ("B1", 240), ("B2", 260), ("B3", 300), ("S", 384),
                              ("M", 480), ("L", 480))
    },
    "InceptionResNetV2": ("inception_resnet_v2", 299),
    "InceptionV3": ("inception_v3", 299),
    "MobileNet": ("mobilenet", 224),
    "MobileNetV2": ("mobilenet_v2", 224),
    "MobileNetV3Small": ("mobilenet_v3", 224),
    "MobileNetV3Large": ("mobilenet_v3", 224),
    "NASNetMobile": ("nasnet", 224),
    "NASNetLarge": ("nasnet", 331),
    **{f"ResNet{depth}": ("resnet", 224) for depth in (50, 101, 152)},
    **{f"ResNet{depth}V2": ("resnet_v2", 224) for depth in (50, 101, 152)},
    "VGG16": ("vgg16", 224),
    "VGG19": ("vgg19", 224),
    "Xception": ("xception", 299),
}


@dataclasses.dataclass(frozen=True)
class KerasHandle:
    """A parsed `keras:` handle.

    Attributes:
        name: canonical application name, e.g. "MobileNetV2".
        weights: "imagenet", "random", or a weights file path.
        alpha: width multiplier for the MobileNet families; None = the application's default.
    """

    name: str
    weights: str = "imagenet"
    alpha: Optional[float] = None


def parse_handle(handle: str) -> KerasHandle:
    """Parse `keras:<Name>[,alpha=<float>][,weights=imagenet|random|<path>]`.

    Raises:
        UsageError: unknown application name, option or option value.
    """
    name, *options = handle[len(PREFIX):].split(",")
    canonical = {key.lower(): key for key in APPLICATIONS}.get(name.strip().lower())
    if canonical is None:
        raise UsageError(
            f"`keras:` name must be one of {sorted(APPLICATIONS)}. Received: {name!r}"
        )
    values: dict[str, str] = {}
    for option in options:
        key, _, value = option.partition("=")
        if key.strip() not in ("alpha", "weights") or not value:
            raise UsageError(
                f"`keras:` options must be alpha=<float> or weights=imagenet|random|<file>. "
                f"Received: {option!r} in {handle!r}"
            )
        values[key.strip()] = value.strip()
    alpha = None
    if "alpha" in values:
        if APPLICATIONS[canonical][0] not in ALPHA_FAMILIES:
            raise UsageError(f"alpha only applies to MobileNet models. Received: {handle!r}")
        try:
            alpha = float(values["alpha"])
        except ValueError:
            raise UsageError(
                f"alpha must be a number. Received: alpha={values['alpha']!r}"
            ) from None
    weights = values.get("weights", "imagenet")
    if weights.lower() in WEIGHT_CHOICES:
        weights = weights.lower()
    elif not Path(weights).expanduser().is_file():
        raise UsageError(
            f"weights must be one of {WEIGHT_CHOICES} or an existing weights file. "
            f"Received: weights={weights!r}"
        )
    return KerasHandle(canonical, weights, alpha)


@register_resolver
def resolve_keras_application(handle: str, image_size: Optional[int],
                              trust_model: bool = False) -> Optional[FeatureExtractor]:
    """Resolver for `keras:` handles; None for anything else. The graph is Keras's own code and a
    weights file holds arrays only, so there is no model file to check (`trust_model` is moot)."""
    if not handle.lower().startswith(PREFIX):
        return None
    return KerasApplicationExtractor(handle, parse_handle(handle), image_size)


class KerasApplicationExtractor(FeatureExtractor):
    """A headless `keras.applications` model, average-pooled, with its own preprocessing."""

    def __init__(self, handle: str, parsed: KerasHandle, image_size: Optional[int] = None) -> None:
        """Build the backbone and load its weights.

        Args:
            handle: what the user typed, for messages.
            parsed: the parsed handle.
            image_size: input side length; None = the application's default.

        Raises:
            UsageError: Keras rejects the configuration (e.g. image too small).
            ModelError: weights missing from the Keras cache, or a weights file that does not fit.
        """
        super().__init__(name="keras_application")
        family, default_size = APPLICATIONS[parsed.name]
        size = image_size or default_size
        applications = importlib.import_module("keras.applications")
        self._preprocess = getattr(applications, family).preprocess_input
        self.model = _build(handle, getattr(applications, parsed.name), parsed, size)
        # Keras 3 variables are not tf.Variables; list the ones underneath so .variables works.
        self.model_variables = tuple(weight.value for weight in self.model.weights)
        width = "" if parsed.alpha is None else f"_a{parsed.alpha:g}"
        self.spec = ExtractorSpec(
            name=handle,
            id=f"keras-{parsed.name.lower()}{width}-{_fingerprint_weights(self.model)}-{size}",
            input_size=(size, size),
            vector_size=int(self.model.output_shape[-1]),
        )

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        """float32 [N, H, W, 3] in [0, 1] -> float32 [N, D]."""
        return self.model(self._preprocess(images * 255.0), training=False)

    def fine_tunable_variables(self, blocks: int) -> tuple[tf.Variable, ...]:
        """The weights of the top `blocks` + 1 layers that have weights; batch-norm layers stay
        frozen (and run in inference mode)."""
        from keras.layers import BatchNormalization  # keras: ~1.7 s to import, keras: handles only

        layers = [layer for layer in self.model.layers
                  if layer.weights and not isinstance(layer, BatchNormalization)]
        return tuple(weight.value for layer in layers[max(0, len(layers) - blocks - 1):]
                     for weight in layer.weights)


def _build(handle: str, constructor: Any, parsed: KerasHandle, size: int) -> Any:
    """Call the application constructor; ImageNet weights strictly from the local cache."""
    kwargs = {"input_shape": (size, size, 3), "include_top": False, "pooling": "avg"}
    if parsed.alpha is not None:
        kwargs["alpha"] = parsed.alpha
    weights = parsed.weights if parsed.weights == "imagenet" else None
    try:
        with _weights_from_cache_only():
            model = constructor(weights=weights, **kwargs)
    except ValueError as error:
        raise UsageError(f"Keras cannot build {handle!r} at {size}x{size}: {error}") from error
    if parsed.weights not in WEIGHT_CHOICES:
        try:
            model.load_weights(str(Path(parsed.weights).expanduser()))
        except Exception as error:  # h5py, shape mismatches, unknown formats
            raise ModelError(
                f"cannot load weights file {parsed.weights!r} into {parsed.name} "
                f"(include_top=False, {size}x{size}): {error}"
            ) from error
    return model


def keras_cache_dir() -> Path:
    """The Keras cache Keras itself uses: $KERAS_HOME, else ~/.keras (or /tmp/.keras)."""
    if os.environ.get("KERAS_HOME"):
        return Path(os.environ["KERAS_HOME"])
    home = os.path.expanduser("~")
    return Path(home if os.access(home, os.W_OK) else "/tmp") / ".keras"


@contextlib.contextmanager
def _weights_from_cache_only() -> Iterator[None]:
    """Make the applications' weight download step look only in the local cache.

    Every application fetches weights through `keras.src.utils.file_utils.get_file`; while this is
    active that call returns the cached file or raises ModelError naming it and its URL.
    """
    from keras.src.utils import file_utils  # keras: ~1.7 s to import, keras: handles only

    download = file_utils.get_file

    def cached_file(fname: str, origin: Optional[str] = None, cache_subdir: str = "datasets",
                    file_hash: Optional[str] = None, **_: Any) -> str:
        path = keras_cache_dir() / cache_subdir / fname
        if not path.is_file():
            raise ModelError(
                f"ImageNet weights {fname} are not in the Keras cache ({path}) and retrainer "
                f"does not download them. Fetch them where you have network: "
                f"curl -L --create-dirs -o {path} {origin} (or run the Keras application once "
                f"there and copy ~/.keras/models), or pass weights=<file> or weights=random"
            )
        if file_hash is not None and not file_utils.validate_file(str(path), file_hash):
            raise ModelError(
                f"cached weights {path} are corrupt (hash mismatch): delete and re-fetch"
            )
        return str(path)

    file_utils.get_file = cached_file
    try:
        yield
    finally:
        file_utils.get_file = download


def _fingerprint_weights(model: Any) -> str:
    """Hash of the architecture name and every weight value: identical vectors <=> same id."""
    digest = hashlib.sha256(_WRAPPER_VERSION + model.name.encode())
    for weight in model.weights:
        value = weight.numpy()
        digest.update(str(value.shape).encode() + value.tobytes())
    return digest.hexdigest()[:16]
