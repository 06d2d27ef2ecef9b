"""The per-batch step of `retrain-extract`'s pipeline, and the summary the run ends in.

One DoFn takes a batch of image paths: it reads and hashes them, skips what the cache has,
decodes, runs the engine and appends the vectors to its bundle's shard; only a small summary
leaves it. That shape is set by what every runner carries, Beam's DaskRunner included, which
keeps every step's outputs in memory until the run ends (so pixels and vectors are never a step's
output), drops what `finish_bundle` outputs (BatchElements' last batch, a file sink's names),
merges tagged outputs into the main one and recomputes a side input's whole upstream in each task
that reads it. What leaves a step is plain Python (str, int, lists, dicts): any runner's coder
carries it.
"""

from __future__ import annotations

import dataclasses
import functools
import uuid
from typing import Any, Iterable, Iterator, Optional

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils import shared

from retrainer.cache._tfrecord_columns import framed
from retrainer.cache.shards import SHARD_PREFIX, SHARD_SUFFIX, cached_digests, encode_record
from retrainer.data.batches import content_digest
from retrainer.data.decoding import UnreadableImageError, decode_image
from retrainer.data.names import is_image_relpath
from retrainer.engines.factory import create_engine
from retrainer.extractors import create_extractor

_TEMP_SUFFIX = ".tmp"


@dataclasses.dataclass(frozen=True)
class ImageBatch:
    """The decoded images of one batch of files, and what became of the others.

    Attributes:
        digests: SHA-256 (hex) of each decoded file's bytes, the cache key.
        pixels: uint8 [B, H, W, 3], row i the file of `digests[i]`.
        already_cached: files skipped because the cache has their vectors.
        unreadable: [path, reason] of each file that could not be read or decoded.
    """

    digests: list[str]
    pixels: np.ndarray
    already_cached: int
    unreadable: list[list[str]]


def summary(shards: Iterable[str] = (), vectors: int = 0, already_cached: int = 0,
            unreadable: Iterable[Iterable[str]] = ()) -> dict[str, Any]:
    """What part of a run did, as plain Python: merged by `MergeSummaries`, then the manifest's
    counts (a runner may hand numpy scalars or strings back: they are converted here)."""
    return {"shards": [str(name) for name in shards], "vectors": int(vectors),
            "already_cached": int(already_cached),
            "unreadable": [[str(path), str(reason)] for path, reason in unreadable]}


def image_paths(image_dir: str, paths: Iterable[str]) -> list[str]:
    """The files of a listing of `image_dir` that discovery picks up, sorted."""
    prefix = len(image_dir.rstrip("/")) + 1
    return sorted(path for path in paths if is_image_relpath(path[prefix:]))


def batches(paths: list[str], batch_size: int) -> list[list[str]]:
    return [paths[start:start + batch_size] for start in range(0, len(paths), batch_size)]


@functools.lru_cache(maxsize=1)
def _cached_digest_set(cache_dir: str, run_dir: str) -> frozenset[str]:
    """The cache's digests, read once per worker process and run (`run_dir` tells runs apart):
    a Dask worker sets a DoFn up again for every partition."""
    return frozenset(cached_digests(cache_dir))


@dataclasses.dataclass(frozen=True)
class Extraction:
    """What to run on the workers and where its vectors go.

    Attributes:
        tfhub_module: what `retrain --tfhub_module` takes (built-in name, hub handle, local path).
        image_size: `retrain --image_size`, or None for the module's own.
        precision: a resolved precision (float32, bfloat16, int8), not auto: every worker must
            compute the vectors of the namespace the launching machine chose.
        trust_model: load the module without checking it (each worker checks it otherwise).
        input_size: (height, width) the extractor takes.
        cache_dir: the cache namespace; files whose digest it holds are skipped.
        run_dir: this run's shard folder.
    """

    tfhub_module: str
    image_size: Optional[int]
    precision: str
    trust_model: bool
    input_size: tuple[int, int]
    cache_dir: str
    run_dir: str


class ExtractShards(beam.DoFn):
    """Batches of image paths -> their vectors in the run's shards; a summary per batch.

    Each worker process builds the engine once (Beam's `shared.Shared`: a Dask worker sets the
    DoFn up again for every partition) and runs it as `retrain` does, at the same precision. Each
    bundle writes one shard: its name goes out with the bundle's first vectors, and the file is
    renamed from its temporary name when the bundle finishes, so a runner that drops what
    `finish_bundle` outputs still gets the name, and a shard named in the manifest is complete (a
    failed bundle's outputs are dropped by the runner, its file deleted by `remove_unnamed_files`).
    """

    def __init__(self, extraction: Extraction) -> None:
        self.extraction = extraction
        self._engine_handle = shared.Shared()

    def setup(self) -> None:
        self.engine = self._engine_handle.acquire(self._load_engine)
        self.cached = _cached_digest_set(self.extraction.cache_dir, self.extraction.run_dir)

    def _load_engine(self) -> Any:
        spec = self.extraction
        extractor = create_extractor(spec.tfhub_module, spec.image_size, spec.trust_model)
        return create_engine(extractor, spec.precision)

    def start_bundle(self) -> None:
        self.stream: Any = None

    def process(self, paths: list[str]) -> Iterator[dict[str, Any]]:
        images = read_and_decode(paths, self.extraction.input_size, self.cached)
        new_shard = []
        if images.digests:
            vectors = self.engine(images.pixels)
            if self.stream is None:
                self.name = f"{SHARD_PREFIX}-{uuid.uuid4().hex}{SHARD_SUFFIX}"
                self.temp = FileSystems.join(self.extraction.run_dir, self.name + _TEMP_SUFFIX)
                self.stream = FileSystems.create(self.temp,
                                                 compression_type=CompressionTypes.UNCOMPRESSED)
                new_shard = [self.name]
            for digest, vector in zip(images.digests, vectors):
                self.stream.write(framed(encode_record(digest, vector)))
        yield summary(new_shard, len(images.digests), images.already_cached, images.unreadable)

    def finish_bundle(self) -> None:
        if self.stream is not None:
            self.stream.close()
            FileSystems.rename([self.temp],
                               [FileSystems.join(self.extraction.run_dir, self.name)])
            self.stream = None


def read_and_decode(paths: list[str], input_size: tuple[int, int],
                    cached: frozenset[str]) -> ImageBatch:
    """Read, hash and decode `paths` (retrainer's decoder), skipping digests in `cached`."""
    pixels = np.empty((len(paths), *input_size, 3), np.uint8)
    digests: list[str] = []
    unreadable: list[list[str]] = []
    already_cached = 0
    for path in paths:
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
                data = stream.read()
        except (OSError, BeamIOError) as error:
            unreadable.append([path, f"cannot read file ({error})"])
            continue
        digest = content_digest(data)
        if digest in cached:
            already_cached += 1
            continue
        try:
            decode_image(data, input_size, path, pixels[len(digests)])
        except UnreadableImageError as error:
            unreadable.append([path, error.reason])
            continue
        digests.append(digest)
    return ImageBatch(digests, pixels[:len(digests)], already_cached, unreadable)


class MergeSummaries(beam.CombineFn):
    """Summaries of batches -> the run's summary (`summary`)."""

    def create_accumulator(self) -> dict[str, Any]:
        return summary()

    def add_input(self, total: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
        return summary(total["shards"] + part["shards"], total["vectors"] + part["vectors"],
                       total["already_cached"] + part["already_cached"],
                       total["unreadable"] + part["unreadable"])

    def merge_accumulators(self, totals: Iterable[dict[str, Any]]) -> dict[str, Any]:
        merged = summary()
        for total in totals:
            merged = self.add_input(merged, total)
        return merged

    def extract_output(self, total: dict[str, Any]) -> dict[str, Any]:
        return summary(sorted(total["shards"]), total["vectors"], total["already_cached"],
                       sorted(total["unreadable"]))


def remove_unnamed_files(run_dir: str, named: Iterable[str]) -> None:
    """Delete the files in `run_dir` the manifest will not name (shards of failed attempts)."""
    keep = {FileSystems.join(run_dir, name) for name in named}
    found = FileSystems.match([FileSystems.join(run_dir, "*")])[0].metadata_list
    stray = [item.path for item in found if item.path not in keep]
    if stray:
        FileSystems.delete(stray)
