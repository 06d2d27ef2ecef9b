"""The run's extractor and engine, known by their specs before they are built.

Building them loads TensorFlow and the weights (seconds), but a rerun whose vectors are all
cached needs only their specs: the cache namespace, the precision, the exported metadata. So the
specs a built-in extractor resolved to (`--extractor_precision auto` depends on the host) are
kept, keyed by retrainer's code, TensorFlow's version, the host and the extraction flags, under
--bottleneck_dir and in the user's cache (`io.host.user_cache_dir`: a new --bottleneck_dir on the
same machine); with them, the models are built only when something must run through them, and an
int8 engine whose converted model is kept runs it without TensorFlow
(`Int8Engine.from_kept_model`). New code has no record yet; for a built-in EfficientNet-Lite at
int8 whose model is kept on this machine, the record is derived without TensorFlow instead.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import platform
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional

import numpy as np

from retrainer.cache.layout import run_result_path
from retrainer.cache.memo import Memo, memo_key
from retrainer.cache.options import ExtractionOptions
from retrainer.config import RetrainConfig
from retrainer.engines import AUTO, INT8, Engine
from retrainer.engines.base import Batch
from retrainer.engines.cpu import default_precision
from retrainer.engines.int8 import Int8Engine, int8_spec, kept_lite_model
from retrainer.errors import ModelError
from retrainer.formats.extractor_spec import ExtractorSpec
from retrainer.formats.lite_weights import MIN_IMAGE_SIZE, VARIANTS, lite_spec, weights_path
from retrainer.io.host import tensorflow_version, usable_cpus, user_cache_dir
from retrainer.io.storage import is_url
from retrainer.pipeline.timer import StageTimer

if TYPE_CHECKING:  # their modules load TensorFlow
    from retrainer.extractors import FeatureExtractor


class Extraction:
    """The extractor and its engine; `extractor()` and the engine's first call build them."""

    def __init__(self, spec: ExtractorSpec, engine: Engine,
                 build: Callable[[], tuple[FeatureExtractor, Engine]],
                 remember: Callable[[Extraction], None] = lambda extraction: None) -> None:
        self.spec = spec  # the extractor's (the engine's spec names its precision too)
        self.engine = engine
        self._build = build
        self._remember = remember
        self._built: Optional[tuple[FeatureExtractor, Engine]] = None

    def remember(self) -> None:
        """Keep the specs for the next run (after the bottleneck stage: an int8 engine then
        knows which converted model it ran)."""
        self._remember(self)

    def extractor(self) -> FeatureExtractor:
        """The extractor itself (TensorFlow), built on first use."""
        return self.built()[0]

    def built(self) -> tuple[FeatureExtractor, Engine]:
        if self._built is None:
            self._built = self._build()
        return self._built


class _DeferredEngine(Engine):
    """An engine known by its kept spec; at its first batch, the kept int8 model without
    TensorFlow, or else the engine built."""

    def __init__(self, kept: dict[str, Any], spec: ExtractorSpec,
                 build: Callable[[], Engine]) -> None:
        self.precision = kept["precision"]
        self.spec = spec
        self.batch_size = int(kept["batch_size"])
        self.devices = tuple(kept["devices"])
        self._kept_model = Path(kept["model"]) if kept.get("model") else None
        self._build = build
        self._engine: Optional[Engine] = None
        self._loading: Optional[Future[Optional[Int8Engine]]] = None

    @property
    def model_path(self) -> Optional[Path]:
        """The kept model it runs: the record's, or once started the started engine's (one
        built where the record named none converts or finds one)."""
        return self._kept_model if self._engine is None else self._engine.model_path

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self._started()(pixels)

    def map(self, batches: Iterable[Batch], pixels: Callable[[Batch], np.ndarray]
            ) -> Iterator[tuple[Batch, np.ndarray]]:
        """`Engine.map` of the engine, started at the first batch with pixels to run (a kept
        int8 model loads meanwhile, while the first batch decodes)."""
        self._load_kept_model()
        remaining = iter(batches)
        for batch in remaining:
            if len(pixels(batch)):
                yield from self._started().map(itertools.chain([batch], remaining), pixels)
                return
            yield batch, np.zeros((0, self.spec.vector_size), np.float32)

    def _load_kept_model(self) -> None:
        """Start loading the kept int8 model on a thread (its interpreters: ~20 ms of LiteRT's
        C++ work, no TensorFlow), unless started or there is none."""
        if self._engine is not None or self._loading is not None:
            return
        if self.precision != INT8 or self._kept_model is None:
            return
        loading: Future[Optional[Int8Engine]] = Future()
        kept_model = self._kept_model

        def load() -> None:
            try:
                loading.set_result(Int8Engine.from_kept_model(self.spec, kept_model,
                                                               usable_cpus()))
            except BaseException as error:  # raised where the engine is first needed
                loading.set_exception(error)

        self._loading = loading
        threading.Thread(target=load, name="int8-load", daemon=True).start()

    def _started(self) -> Engine:
        if self._engine is None:
            self._load_kept_model()
            if self._loading is not None:
                self._engine = self._loading.result()
            if self._engine is None:
                self._engine = self._build()
        return self._engine


def prepare_extraction(config: RetrainConfig, timer: StageTimer,
                       load_tensorflow: Callable[[], None]) -> Extraction:
    """The run's extractor and engine (see the module docstring); `load_tensorflow()` is called
    before they are built.

    Raises:
        As `pipeline.extractor.prepare_extractor`.
    """
    options = config.extraction
    key = _specs_key(options)
    records = [Memo(root, run_result_path)
               for root in (options.bottleneck_dir, user_cache_dir() / "extraction-specs")]
    kept = None
    if key is not None and not config.training.do_fine_tuning:
        kept = next((data for data in (memo.read(key) for memo in records) if data), None)

    def build() -> tuple[FeatureExtractor, Engine]:
        load_tensorflow()
        from retrainer.pipeline.extractor import prepare_extractor

        return prepare_extractor(config, timer)

    def remember(extraction: Extraction) -> None:
        if key is None:
            return
        engine = extraction.engine
        model = engine.kept_model_path()  # also of an engine that ran no image (all cached)
        document = json.dumps(_record(extraction.spec, engine.spec, engine.precision,
                                      engine.batch_size, engine.devices, model),
                              sort_keys=True).encode()
        if document != kept:
            for memo in records:
                memo.write(key, document)

    if kept is not None:
        try:
            return _kept_extraction(json.loads(kept), build, remember)
        except (ValueError, KeyError, TypeError):  # a damaged record: built as without one
            kept = None
    known = _kept_lite_int8(options) if key is not None and not config.training.do_fine_tuning \
        else None
    if known is not None:  # new code: no record yet, but nothing to build for
        return _kept_extraction(known, build, remember)
    extractor, engine = build()
    return Extraction(extractor.spec, engine, lambda: (extractor, engine), remember)


def _kept_extraction(document: dict[str, Any],
                     build: Callable[[], tuple[FeatureExtractor, Engine]],
                     remember: Callable[[Extraction], None]) -> Extraction:
    def spec_of(fields: dict[str, Any]) -> ExtractorSpec:
        return ExtractorSpec(fields["name"], fields["id"], tuple(fields["input_size"]),
                             int(fields["vector_size"]))

    extraction = Extraction(spec_of(document["extractor"]), Engine(), build, remember)
    extraction.engine = _DeferredEngine(document["engine"], spec_of(document["engine"]),
                                        lambda: extraction.built()[1])
    return extraction


def _record(spec: ExtractorSpec, engine: ExtractorSpec, precision: str, batch_size: int,
            devices: tuple[str, ...], model: Optional[Path]) -> dict[str, Any]:
    """The kept specs: the extractor's, its engine's (`Engine` attributes) and the kept model
    the engine runs."""
    return {"extractor": dataclasses.asdict(spec),
            "engine": {**dataclasses.asdict(engine), "precision": precision,
                       "batch_size": batch_size, "devices": list(devices),
                       "model": None if model is None else str(model)}}


def _kept_lite_int8(options: ExtractionOptions) -> Optional[dict[str, Any]]:
    """The record a built-in EfficientNet-Lite at int8 writes, derived without TensorFlow
    when the int8 model kept for it on this machine is whole; None otherwise (then built)."""
    variant = VARIANTS.get(options.extractor)
    if variant is None or options.devices or not (
            options.precision == INT8 or (options.precision == AUTO and _auto_is_int8())):
        return None
    if options.image_size is not None and options.image_size < MIN_IMAGE_SIZE:
        return None  # the build says why not
    try:
        weights_path(variant)  # installed (the build checks its digest)
    except ModelError:
        return None
    spec = lite_spec(variant, options.image_size)
    model = kept_lite_model(spec, variant.sha256)
    if model is None:
        return None
    return _record(spec, int8_spec(spec), INT8, Int8Engine.batch_size, Int8Engine.devices,
                   model)


def _auto_is_int8() -> bool:
    """Whether `--extractor_precision auto` means int8 for a built-in here, known without
    TensorFlow: a Linux host with no GPU device (`engines.factory.create_engine` asks
    TensorFlow) whose CPU runs int8 fast."""
    gpu_nodes = ("nvidia", "kfd", "dxg")
    return (platform.system() == "Linux" and default_precision(measured=True) == INT8
            and not any(entry.startswith(gpu_nodes) for entry in os.listdir("/dev")))


def _specs_key(options: ExtractionOptions) -> Optional[str]:
    """The record's key; None for an extractor whose spec could change under the same name (a
    module folder, a URL or hub handle, a keras: backbone): those are always built."""
    name = options.extractor
    if is_url(name) or ":" in name or "/" in name or os.path.exists(os.path.expanduser(name)):
        return None
    gpus = sorted(entry for entry in os.listdir("/dev") if entry.startswith("nvidia")) \
        if os.path.isdir("/dev") else []
    return memo_key("extraction specs", tensorflow_version(), platform.node(), gpus, name,
                    options.image_size, options.precision, list(options.devices))
