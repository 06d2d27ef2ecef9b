"""int8 engine: the extractor converted to a full-integer TFLite model, run by LiteRT + XNNPACK.

Calibration uses the fixed photos shipped in `calibration/` (scripts/make_calibration_set.py), never
the user's images, so the same weights always give the same model and the same vectors, whatever
dataset is being processed. The extractor id names the calibration set's digest. The converted
model is cached on disk (`_model_cache`), keyed by the weights, calibration set and TF version.

The model's input is quantized uint8: calibrated on pixels scaled to [0, 1], a range the shipped
photos span exactly, it gets scale 1/255 and zero point 0 (checked after conversion), so raw pixels
are its quantized values: no float conversion on the host (0.76 CPU ms per 224x224 image). Its
vectors are bit-identical to those of the v1 model, which took float32 [0, 1] and quantized them in
its first op. (A cast from uint8 inside the model ran 3.7x slower on XNNPACK.) Its own first op
shifts them to int8 (q - 128), and its second subtracts the normalization's 127/255, which only
moves the zero point; the interpreters run the model without both, fed the pixels with their top
bit flipped (the same int8 values; `formats.tflite.int8_input_model`): the kept file is
unchanged, the vectors the same, the engine ~3 % faster.
Output: float32 vectors.

Each CPU runs its own single-thread interpreter, rather than one interpreter splitting every
operator across the CPUs: the late layers (7x7 maps) are too small to split well (engine alone on
2 cores: ~2.05 vs ~2.2 ms an image), and a decoder thread that preempts one kernel thread stalls
the whole operator. The bottleneck stage hands whole batches to whichever interpreter is free
(`map`: no wait for the slower one between batches); a single call splits its rows among them.
Same vectors: each image's arithmetic is the same whatever its batch or thread.

`ai-edge-litert` (`pip install 'retrainer[litert]'`) is used when installed; otherwise TensorFlow's
own `tf.lite.Interpreter` (deprecated in its favour; the warning is silenced: same kernels).
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import queue
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Optional

import numpy as np

from retrainer.data.decoding import decode_image
from retrainer.engines._model_cache import cached_model, kept_model, model_path
from retrainer.engines.base import INT8, Batch, Engine, precision_spec
from retrainer.errors import UsageError
from retrainer.formats.tflite import (
    BatchInterpreter,
    full_integer_model,
    int8_input_model,
    new_interpreter,
    pooled_map_model,
)
from retrainer.io.host import tensorflow_version

if TYPE_CHECKING:  # TensorFlow: imported only to convert a model, never to run a kept one
    from retrainer.extractors import ExtractorSpec, FeatureExtractor

CALIBRATION_DIR = Path(__file__).resolve().parent / "calibration"
# XNNPACK's int8 kernels ran fastest at 8 images per invoke on 2 cores (benchmarks/bench_extractor.py).
BATCH_SIZE = 8
# At most this many interpreters (each holds its own packed weights and activations, ~40 MB);
# the CPUs beyond are shared out as kernel threads.
MAX_INTERPRETERS = 8
# Bump when `_converted` changes how the model is built: part of the cached model's key and of the
# engine's id, so vectors of another model never share a bottleneck cache namespace.
# v1: float32 input; v2: quantized uint8 input.
MODEL_FORMAT = "int8-v2"


def calibration_images(input_size: tuple[int, int]) -> list[np.ndarray]:
    """The shipped calibration photos, decoded as training decodes: uint8 [H, W, 3] each."""
    return [decode_image(path.read_bytes(), input_size, path) for path in _calibration_files()]


def calibration_digest() -> str:
    """SHA-256 over the calibration files' names and bytes (first 8 hex digits go in the id)."""
    digest = hashlib.sha256()
    for path in _calibration_files():
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _calibration_files() -> list[Path]:
    return sorted(CALIBRATION_DIR.glob("*.jpg"))


class Int8Engine(Engine):
    """Full-integer TFLite model of the extractor on the XNNPACK delegate.

    Raises:
        UsageError: on the first call: the extractor has ops TFLite cannot convert to int8
            (exit 2).
    """

    precision = INT8
    batch_size = BATCH_SIZE
    devices = ("/device:CPU:0",)  # LiteRT runs on the host CPU only

    def __init__(self, extractor: FeatureExtractor, threads: int) -> None:
        """The engine of `extractor`; its model is converted (or read from the cache) on the
        first call: a run whose vectors are all cached needs only the id, never the model."""
        self.spec = int8_spec(extractor.spec)
        self._extractor: Optional[FeatureExtractor] = extractor
        self._threads = threads
        self._runners: list[BatchInterpreter] = []
        self._pool: Optional[ThreadPoolExecutor] = None
        self._signed = False  # the interpreters take int8 (`_start`)
        self._model_path: Optional[Path] = None  # the cached .tflite, once loaded

    @classmethod
    def from_kept_model(cls, spec: ExtractorSpec, path: Path, threads: int
                        ) -> Optional[Int8Engine]:
        """The engine whose converted model an earlier run kept at `path` (`model_path`), with
        this engine's `spec`; loaded and run without TensorFlow. None when the file is gone or
        damaged (the caller then builds the engine from its extractor)."""
        model = kept_model(path)
        if model is None:
            return None
        engine = cls.__new__(cls)
        engine.spec, engine._extractor, engine._threads = spec, None, threads
        engine._runners, engine._pool = [], None
        engine._start(model, path)
        return engine

    def kept_model_path(self) -> Optional[Path]:
        """`model_path`, or before the first call the model kept on this machine for this
        extractor (None if none is whole): a run that computed no vector records it for the
        next one (`pipeline.extraction`), which then runs it without TensorFlow."""
        if self.model_path is None and self._extractor is not None:
            path = _model_path(self._extractor)
            return path if kept_model(path) is not None else None
        return self.model_path

    def _load(self) -> None:
        assert self._extractor is not None  # an engine from a kept model is loaded already
        extractor = self._extractor
        path = _model_path(extractor)
        try:
            model = cached_model(path, lambda: _converted(extractor))
        except Exception as error:  # the converter raises several unrelated types
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UsageError(
                f"--extractor_precision int8 is not available for extractor "
                f"{extractor.spec.name!r}: TFLite cannot convert it to int8 ({reason[:300]}). "
                "Use --extractor_precision float32 or bfloat16."
            ) from None
        self._start(model, path)

    def _start(self, model: bytes, path: Path) -> None:
        """One single-thread interpreter per CPU (`MAX_INTERPRETERS` at most), created side by
        side, each planned for BATCH_SIZE rows (XNNPACK packs its weights then: ~10 ms); the
        model run without its first operators when they only shift the uint8 pixels to int8
        (`int8_input_model`: the same vectors, ~3 % less time)."""
        self._model_path = path
        signed = int8_input_model(model)
        self._signed = signed is not None
        model = signed or model
        count = max(1, min(self._threads, MAX_INTERPRETERS))
        threads = max(1, self._threads // count)

        def planned(_: int) -> BatchInterpreter:
            runner = BatchInterpreter(model, threads)
            runner.plan((BATCH_SIZE, *runner.input_shape[1:]))
            return runner

        if count == 1:
            self._runners = [planned(0)]
            return
        self._pool = ThreadPoolExecutor(count, thread_name_prefix="int8")
        self._runners = list(self._pool.map(planned, range(count)))

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        if not self._runners:
            self._load()
        pixels = np.asarray(pixels, np.uint8)
        if not len(pixels):
            return np.zeros((0, self.spec.vector_size), np.float32)
        # Chunks of at most BATCH_SIZE rows, at least one per interpreter; interpreter i runs
        # chunks i, i + n, ...: equal shares, and the same chunk sizes call after call.
        count = len(self._runners)
        chunks = max(-(-len(pixels) // BATCH_SIZE), min(count, len(pixels)))
        bounds = np.linspace(0, len(pixels), chunks + 1).round().astype(int)
        slices = [pixels[start:end] for start, end in itertools.pairwise(bounds)]
        if self._pool is None:
            return np.concatenate([self._run(self._runners[0], chunk) for chunk in slices])
        shares = self._pool.map(lambda runner, share: [self._run(runner, chunk) for chunk in share],
                                self._runners, [slices[first::count] for first in range(count)])
        done = list(shares)
        return np.concatenate([done[index % count][index // count] for index in range(chunks)])

    def _run(self, runner: BatchInterpreter, pixels: np.ndarray) -> np.ndarray:
        """`runner`'s vectors of uint8 `pixels`, fed as int8 (q - 128: the top bit flipped) to
        a model that takes them so."""
        return runner((pixels ^ np.uint8(0x80)).view(np.int8) if self._signed else pixels)

    def map(self, batches: Iterable[Batch], pixels: Callable[[Batch], np.ndarray]
            ) -> Iterator[tuple[Batch, np.ndarray]]:
        """`Engine.map`, each batch run whole by whichever interpreter is free, as many at once
        as there are interpreters (and one more waiting); results in order."""
        if not self._runners:
            self._load()
        if self._pool is None:
            yield from super().map(batches, pixels)
            return
        free: queue.SimpleQueue[BatchInterpreter] = queue.SimpleQueue()
        for runner in self._runners:
            free.put(runner)

        def run(images: np.ndarray) -> np.ndarray:
            runner = free.get()
            try:
                return np.concatenate([self._run(runner, images[start:start + BATCH_SIZE])
                                       for start in range(0, len(images), BATCH_SIZE)])
            finally:
                free.put(runner)

        pending: collections.deque[tuple[Batch, Future[np.ndarray]]] = collections.deque()
        empty = np.zeros((0, self.spec.vector_size), np.float32)
        try:
            for batch in batches:
                images = np.asarray(pixels(batch), np.uint8)
                done: Future[np.ndarray] = Future()
                if len(images):
                    done = self._pool.submit(run, images)
                else:
                    done.set_result(empty)
                pending.append((batch, done))
                if len(pending) > len(self._runners):
                    first, vectors = pending.popleft()
                    yield first, vectors.result()
            while pending:
                first, vectors = pending.popleft()
                yield first, vectors.result()
        finally:
            for _, vectors in pending:
                vectors.cancel()


def kept_map_model(path: Path) -> Optional[bytes]:
    """The int8 model kept at `path` (`Int8Engine.model_path`) with its last map before the
    pooling as its output (int8 [N, h, w, K]: the report's heat maps), or None when it is gone
    or damaged."""
    model = kept_model(path)
    return None if model is None else pooled_map_model(model)


def _converted(extractor: FeatureExtractor) -> bytes:
    """The extractor as a full-integer model calibrated on the shipped photos (seconds)."""
    import tensorflow as tf

    height, width = extractor.spec.input_size
    features = tf.function(
        extractor.__call__, input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32)]
    )
    calibration = [[_scaled(image[np.newaxis])]
                   for image in calibration_images(extractor.spec.input_size)]
    # No trackable object: the converter's path the engine's vectors were first measured with.
    model = full_integer_model(features.get_concrete_function(), calibration, uint8_input=True)
    scale, zero_point = input_quantization(model)
    if not (np.isclose(scale, 1.0 / 255.0, rtol=1e-6) and zero_point == 0):  # q means q / 255
        raise RuntimeError(f"the converted model's uint8 input has scale {scale}, zero point "
                           f"{zero_point}, not 1/255 and 0: raw pixels cannot be fed to it")
    return model


def input_quantization(model: bytes) -> tuple[float, int]:
    """(scale, zero point) of a TFLite model's first input."""
    return new_interpreter(model).get_input_details()[0]["quantization"]


def int8_spec(spec: ExtractorSpec) -> ExtractorSpec:
    """The int8 engine's spec for an extractor's: its id names the model format and the
    calibration set."""
    return precision_spec(spec, f"{MODEL_FORMAT}-{calibration_digest()[:8]}")


def kept_lite_model(spec: ExtractorSpec, weights_digest: str) -> Optional[Path]:
    """The model kept on this machine for the extractor of `spec` whose `weights_digest()` is
    `weights_digest` (a built-in's: its weights file's), if whole; found without TensorFlow."""
    path = _keyed_path(spec, weights_digest)
    return path if kept_model(path) is not None else None


def _model_path(extractor: FeatureExtractor) -> Path:
    return _keyed_path(extractor.spec, extractor.weights_digest())


def _keyed_path(spec: ExtractorSpec, weights_digest: str) -> Path:
    """The cached model's path, keyed by all that decides its bytes."""
    height, width = spec.input_size
    return model_path(int8_spec(spec).id, INT8, (MODEL_FORMAT, spec.id, f"{height}x{width}",
                                                  weights_digest, calibration_digest(),
                                                  tensorflow_version()))


def _scaled(pixels: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 in [0, 1], as the float32 engine scales them (calibration)."""
    return pixels.astype(np.float32) / np.float32(255.0)
