"""Feature extractors from TF Hub handles/URLs and local SavedModel or TF1 Hub-format directories.

Any module with an image feature-vector entry point works: a TF2 SavedModel whose `__call__` (or a
signature) maps float32 [N, H, W, 3] in [0, 1] to [N, D], or a legacy TF1 Hub module (directory
with `tfhub_module.pb`) with an `image_feature_vector`/`default` signature. Modules are loaded with
`tf.saved_model.load` (what `hub.load` does), never wrapped in `hub.KerasLayer`, so they trace and
freeze inside the Keras 3 pipeline. `tensorflow_hub` is imported, and the network used, only when
the user names a remote handle.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

import tensorflow as tf

from retrainer.errors import ModelError, UsageError
from retrainer.extractors.base import ExtractorSpec, FeatureExtractor
from retrainer.extractors.registry import list_extractors, register_resolver
from retrainer.io import storage
from retrainer.io.host import user_cache_dir
from retrainer.security import check_model

logger = logging.getLogger(__name__)

REMOTE_PREFIXES = ("https://", "http://", "gs://")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
DEFAULT_IMAGE_SIZE = 224  # used when a module accepts any size and --image_size is not given
DOWNLOAD_TIMEOUT_S = 60.0  # per socket operation, so a dead connection fails instead of hanging
TF1_HUB_MARKER = "tfhub_module.pb"
# Entry points tried, in order, when a module has no usable `__call__`.
SIGNATURE_PREFERENCE = ("image_feature_vector", "default", "serving_default")
# Bump when the way vectors are computed from a module changes, so old cache entries are not reused.
_WRAPPER_VERSION = b"hub-extractor/1"


def is_remote_handle(handle: str) -> bool:
    """True for handles that need a download (TF Hub/Kaggle URLs, GCS tarballs)."""
    return handle.startswith(REMOTE_PREFIXES)


def is_module_folder_url(handle: str) -> bool:
    """True for a module directory on a file system TensorFlow reads (gs://bucket/module, ram://).

    Archives (.tar.gz) and http(s) handles go to `tensorflow_hub`'s resolvers instead.
    """
    return (storage.is_url(handle) and not handle.startswith(("http://", "https://"))
            and not handle.endswith(ARCHIVE_SUFFIXES))


def looks_like_path(handle: str) -> bool:
    """True for handles the user meant as a local directory (whether or not it exists)."""
    return (os.sep in handle and ":" not in handle) or handle.startswith(("~", "."))


def default_hub_cache_dir() -> Path:
    """Where downloaded modules are kept unless TFHUB_CACHE_DIR says otherwise."""
    return user_cache_dir() / "tfhub_modules"


@register_resolver
def resolve_hub_module(handle: str, image_size: Optional[int],
                       trust_model: bool = False) -> Optional[FeatureExtractor]:
    """Resolver for remote hub handles and local module directories; None for anything else."""
    if is_module_folder_url(handle):
        return HubModuleExtractor(handle, fetch_module_folder(handle), image_size, trust_model)
    if is_remote_handle(handle):
        return HubModuleExtractor(handle, download_module(handle), image_size, trust_model)
    path = Path(handle).expanduser()
    if path.is_dir():
        return HubModuleExtractor(handle, path, image_size, trust_model)
    if path.exists():
        raise UsageError(
            f"--tfhub_module {handle!r} is a file; expected a directory holding saved_model.pb "
            f"(extract a downloaded .tar.gz module first)"
        )
    if looks_like_path(handle):
        hint = ""
        if handle.startswith(("tfhub.dev/", "www.kaggle.com/", "kaggle.com/")):
            hint = f" To download it, spell it as a URL: https://{handle}"
        raise UsageError(f"module directory {handle!r} does not exist.{hint}")
    return None


def fetch_module_folder(url: str) -> Path:
    """Copy a remote module directory into the module cache, in a folder named by its content.

    Copied anew on every run (a module is small next to the images), so a module replaced in place
    is never mistaken for the old one; the content-named folder is written once (temp + rename).

    Raises:
        UsageError: `url` is not a directory.
    """
    remote = storage.as_path(url)
    if not remote.is_dir():
        raise UsageError(f"--tfhub_module {url!r} is not a directory holding saved_model.pb "
                         "(pass the module's folder, or a .tar.gz archive)")
    cache_dir = Path(os.environ.get("TFHUB_CACHE_DIR") or default_hub_cache_dir()) / "folders"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as staging:
        copy = Path(staging) / "module"
        storage.download_tree(remote, copy)
        target = cache_dir / fingerprint_directory(copy)[:32]
        try:
            copy.rename(target)
        except OSError:
            if not target.is_dir():  # not merely another run that got there first
                raise
    return target


def download_module(handle: str) -> Path:
    """Download (or find in the cache) a remote module with `tensorflow_hub`.

    The cache is $TFHUB_CACHE_DIR, else `${XDG_CACHE_HOME:-~/.cache}/retrainer/tfhub_modules`; a
    module found there is used without contacting the network.

    Returns:
        The local module directory.

    Raises:
        ModelError: the download failed (offline, unknown handle, not a module archive).
    """
    cache_dir = os.environ.get("TFHUB_CACHE_DIR") or str(default_hub_cache_dir())
    with _hub_download_settings(cache_dir):
        import tensorflow_hub as hub  # slow to import, and only remote handles need it

        try:
            return Path(hub.resolve(handle))
        except Exception as error:  # urllib, tarfile and tf.errors all signal download failures
            raise ModelError(
                f"could not download TF Hub module {handle!r}: {type(error).__name__}: {error}. "
                f"Check the handle and your network, or download the module elsewhere, copy its "
                f"directory here and pass --tfhub_module /path/to/module (cache: {cache_dir})"
            ) from error


@contextlib.contextmanager
def _hub_download_settings(cache_dir: str) -> Iterator[None]:
    """Point tensorflow_hub at our cache and give sockets a timeout, restoring both afterwards."""
    previous_cache = os.environ.get("TFHUB_CACHE_DIR")
    previous_timeout = socket.getdefaulttimeout()
    os.environ["TFHUB_CACHE_DIR"] = cache_dir
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous_timeout)
        if previous_cache is None:
            del os.environ["TFHUB_CACHE_DIR"]
        else:
            os.environ["TFHUB_CACHE_DIR"] = previous_cache


def fingerprint_directory(directory: Path) -> str:
    """Content hash of every file under `directory` (names included), hex.

    Size and mtime are not enough: a module replaced in place must never reuse cached vectors.
    """
    digest = hashlib.sha256(_WRAPPER_VERSION)
    for root, dirs, files in os.walk(directory, followlinks=True):
        dirs.sort()
        for file_name in sorted(files):
            path = Path(root) / file_name
            digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
            with open(path, "rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def load_module(module_dir: Path, name: str, trust_model: bool = False) -> Any:
    """`hub.load` without the hub import, after `retrainer.security.check_model` (unless trusted):
    TF1 Hub modules load with the empty tag set.

    Raises:
        UsageError: the directory holds no SavedModel.
        UntrustedModelError: the module failed the model check.
        ModelError: TensorFlow cannot load it.
    """
    check_local_module(module_dir, name, trust_model)
    tags: Optional[list[str]] = [] if (module_dir / TF1_HUB_MARKER).is_file() else None
    try:
        return tf.saved_model.load(str(module_dir), tags=tags)
    except Exception as error:  # TensorFlow raises many types for corrupt or foreign models
        raise ModelError(f"cannot load module {name!r}: {type(error).__name__}: {error}") from error


def check_extractor_module(handle: str, trust_model: bool) -> None:
    """`check_local_module` when `handle` is a local module folder (else it is checked once loaded,
    or it is no model file: a built-in or `keras:` name). Lets a run refuse before writing."""
    path = Path(handle).expanduser()
    if handle not in list_extractors() and not storage.is_url(handle) and path.is_dir():
        check_local_module(path, handle, trust_model)


def check_local_module(module_dir: Path, name: str, trust_model: bool = False) -> None:
    """`check_model` a module folder (every entry point: any may become the extractor).

    Raises:
        UsageError: the directory holds no SavedModel.
        UntrustedModelError: the module failed the check.
    """
    if not any((module_dir / f).is_file() for f in ("saved_model.pb", "saved_model.pbtxt")):
        raise UsageError(
            f"{name!r} is not a model directory: expected a TF2 SavedModel or TF1 Hub module "
            f"(saved_model.pb), found {sorted(p.name for p in module_dir.iterdir())[:10]}"
        )
    check_model(module_dir, "saved_model", trust=trust_model)


class HubModuleExtractor(FeatureExtractor):
    """Bottleneck vectors from a loaded image feature-vector module.

    The module expects [0, 1] RGB input (the TF Hub image convention), so images pass unchanged.
    """

    def __init__(self, name: str, module_dir: Path, image_size: Optional[int] = None,
                 trust_model: bool = False) -> None:
        """Check and load the module, and work out how to call it, its input and vector size.

        Args:
            name: what the user passed to --tfhub_module (for messages and the id).
            module_dir: local directory holding the module.
            image_size: side length for modules that accept any size.
            trust_model: skip the model check (docs/security.md).

        Raises:
            UsageError: not a module directory, or `image_size` conflicts with a fixed-size module.
            UntrustedModelError: the module failed the model check.
            ModelError: the module cannot be loaded or has no image feature-vector entry point.
        """
        super().__init__(name="hub_module")
        self.module = load_module(module_dir, name, trust_model)
        self._signature = None
        self._input_key = ""
        self._output_key = ""
        self._pass_training = False  # whether `__call__` takes training=False (Keras-made modules)
        input_spec = self._find_entry_point(name)
        input_size = _resolve_input_size(name, input_spec.shape, image_size)
        vector_size = self._probe_vector_size(name, input_size)
        size_tag = f"{input_size[0]}x{input_size[1]}"
        fingerprint = fingerprint_directory(module_dir)[:16]
        self.spec = ExtractorSpec(
            name=name,
            id=f"hub-{_slug(name)}-{fingerprint}-{size_tag}",
            input_size=input_size,
            vector_size=vector_size,
        )

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        """float32 [N, H, W, 3] in [0, 1] -> float32 [N, D]."""
        if self._signature is not None:
            features = self._signature(**{self._input_key: images})[self._output_key]
        elif self._pass_training:
            features = self.module(images, training=False)
        else:
            features = self.module(images)
        return tf.cast(features, tf.float32)

    def fine_tunable_variables(self, blocks: int) -> tuple[tf.Variable, ...]:
        """All the module's trainable variables (a SavedModel does not say where its blocks are).

        Raises:
            UsageError: a TF1 Hub module or a signature-only SavedModel, or no trainable variables.
        """
        trainable = tuple(variable for variable in getattr(self, "module_variables", ())
                          if variable.trainable)
        if self._signature is not None or not trainable:
            kind = "frozen signature" if self._signature is not None else "no trainable variables"
            raise UsageError(
                f"--do_fine_tuning: module {self.spec.name!r} cannot be trained ({kind}; TF1 Hub "
                "modules never can). Drop --do_fine_tuning, or use a TF2 SavedModel whose "
                "__call__ has trainable variables, a built-in efficientnet_lite* or a keras: "
                "backbone."
            )
        if blocks:
            logger.info("Fine-tuning all %d trainable variables of %s (--fine_tune_blocks does "
                        "not apply to SavedModel modules).", len(trainable), self.spec.name)
        return trainable

    def _find_entry_point(self, name: str) -> tf.TensorSpec:
        """Prefer the module's `__call__` (TF2 reusable SavedModel), else an image signature."""
        call = getattr(self.module, "__call__", None)  # noqa: B004 (the attribute itself)
        if isinstance(call, tf.types.experimental.PolymorphicFunction):
            for concrete in call.concrete_functions:
                args = concrete.structured_input_signature[0]
                if args and _is_image_spec(args[0]):
                    self.module_variables = tuple(concrete.variables)  # so .variables lists them
                    self._pass_training = "training" in inspect.signature(call).parameters
                    return args[0]
        signatures = dict(self.module.signatures)
        ordered = [s for s in SIGNATURE_PREFERENCE if s in signatures]
        ordered += sorted(set(signatures) - set(ordered))
        for signature_name in ordered:
            signature = signatures[signature_name]
            inputs = signature.structured_input_signature[1]
            image_keys = [key for key, spec in inputs.items() if _is_image_spec(spec)]
            outputs = signature.structured_outputs
            output_key = "default" if "default" in outputs else next(iter(outputs), "")
            if len(inputs) == 1 and image_keys and (len(outputs) == 1 or output_key == "default"):
                self._signature = signature
                self.module_variables = tuple(signature.variables)
                self._input_key, self._output_key = image_keys[0], output_key
                return inputs[image_keys[0]]
        raise ModelError(
            f"module {name!r} has no image feature-vector entry point: expected a __call__ or a "
            f"signature taking float32 [N, H, W, 3]; found signatures {sorted(signatures)}"
        )

    def _probe_vector_size(self, name: str, input_size: tuple[int, int]) -> int:
        """Run one black image through the module: checks it works and gives D."""
        try:
            features = self(tf.zeros([1, *input_size, 3], tf.float32))
        except Exception as error:  # whatever the module's own graph raises
            raise ModelError(f"module {name!r} failed on a {input_size} image: {error}") from error
        if features.shape.rank != 2:
            raise ModelError(
                f"module {name!r} returns shape {features.shape.as_list()}; expected a feature "
                f"vector [N, D]. Use an image feature-vector module, not a feature-map one"
            )
        return int(features.shape[1])


def _is_image_spec(spec: Any) -> bool:
    return (
        isinstance(spec, tf.TensorSpec)
        and spec.dtype == tf.float32
        and spec.shape.rank == 4
        and spec.shape[-1] in (3, None)
    )


def _resolve_input_size(
    name: str, shape: tf.TensorShape, image_size: Optional[int]
) -> tuple[int, int]:
    """The module's own (H, W) when fixed; `image_size` (or 224) where it accepts any size.

    Raises:
        UsageError: `image_size` differs from the module's fixed size.
    """
    height, width = shape[1], shape[2]
    if height is not None and width is not None:
        if image_size is not None and (image_size, image_size) != (height, width):
            raise UsageError(
                f"module {name!r} takes {height}x{width} images; --image_size={image_size} "
                f"conflicts with it. Omit --image_size or choose a module built for that size"
            )
        return height, width
    if image_size is None:
        image_size = DEFAULT_IMAGE_SIZE
        logger.info("Module %s accepts any image size; using %d (see --image_size).",
                    name, image_size)
    return height or image_size, width or image_size


def _slug(handle: str) -> str:
    """A short filesystem-safe reminder of the handle for the extractor id."""
    if storage.is_url(handle):
        tail = "_".join(handle.split("://", 1)[1].rstrip("/").split("/")[-4:])
    else:
        tail = Path(handle).expanduser().resolve().name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", tail).strip("._-")[-48:] or "module"
