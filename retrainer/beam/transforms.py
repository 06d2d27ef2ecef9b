"""The steps of `retrain-extract`'s pipeline, written so that every Beam runner carries them.

Each element is a batch of images from the start (a list of paths), so no step needs
`finish_bundle` outputs (BatchElements' last batch), tagged outputs or side inputs: Beam's
DaskRunner drops the first, merges the second into the main output and recomputes the third's
whole upstream inside every task that reads it. What crosses a step is plain Python (str, int,
lists, dicts) or, for pixels and vectors, numpy arrays, so any runner's coder carries it.
"""

from __future__ import annotations

import dataclasses
import functools
import uuid
from typing import Any, Iterable, Iterator

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems

from retrainer._tfrecord_columns import framed
from retrainer.bottlenecks import content_digest
from retrainer.image_names import is_image_relpath
from retrainer.images import UnreadableImageError, decode_image
from retrainer.shards import SHARD_PREFIX, SHARD_SUFFIX, cached_digests, encode_record

_TEMP_SUFFIX = ".tmp"


@dataclasses.dataclass(frozen=True)
class ImageBatch:
    """Decoded images of one batch of files, and what became of the others.

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


class HashAndDecode(beam.DoFn):
    """A batch of image paths -> [ImageBatch] (the list RunInference's no-batching mode takes): the
    files not in the cache, hashed and decoded.

    Args:
        input_size: (height, width) the extractor takes.
        cache_dir: the extractor's cache namespace; files whose digest it holds are skipped.
        run_dir: this run's shard folder (a key for the per-process digest cache).
    """

    def __init__(self, input_size: tuple[int, int], cache_dir: str, run_dir: str) -> None:
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.cache_dir = cache_dir
        self.run_dir = run_dir

    def setup(self) -> None:
        self.cached = _cached_digest_set(self.cache_dir, self.run_dir)

    def process(self, paths: list[str]) -> Iterator[list[ImageBatch]]:
        pixels = np.empty((len(paths), *self.input_size, 3), np.uint8)
        digests: list[str] = []
        unreadable: list[list[str]] = []
        already_cached = 0
        for path in paths:
            try:
                with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                    data = f.read()
            except (OSError, BeamIOError) as error:
                unreadable.append([path, f"cannot read file ({error})"])
                continue
            digest = content_digest(data)
            if digest in self.cached:
                already_cached += 1
                continue
            try:
                decode_image(data, self.input_size, path, pixels[len(digests)])
            except UnreadableImageError as error:
                unreadable.append([path, error.reason])
                continue
            digests.append(digest)
        yield [ImageBatch(digests, pixels[:len(digests)], already_cached, unreadable)]


class WriteShards(beam.DoFn):
    """Vectors -> one TFRecord shard per bundle in the run folder; outputs a summary per batch.

    The shard's name goes out with the bundle's first batch and the file is renamed from its
    temporary name when the bundle finishes: a runner that drops what `finish_bundle` outputs
    (Dask) still gets it, and a bundle that fails is retried by the runner, its outputs dropped,
    so a shard named in the manifest is always complete. Files of failed attempts are never named;
    `remove_unnamed_files` deletes them when the run finishes.
    """

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir

    def start_bundle(self) -> None:
        self.stream: Any = None

    def process(self, element: Any) -> Iterator[dict[str, Any]]:
        batch, vectors = element.example, element.inference
        new_shard = []
        if self.stream is None and len(batch.digests):
            self.name = f"{SHARD_PREFIX}-{uuid.uuid4().hex}{SHARD_SUFFIX}"
            self.temp = FileSystems.join(self.run_dir, self.name + _TEMP_SUFFIX)
            self.stream = FileSystems.create(self.temp,
                                             compression_type=CompressionTypes.UNCOMPRESSED)
            new_shard = [self.name]
        for digest, vector in zip(batch.digests, vectors):
            self.stream.write(framed(encode_record(digest, vector)))
        yield summary(new_shard, len(batch.digests), batch.already_cached, batch.unreadable)

    def finish_bundle(self) -> None:
        if self.stream is not None:
            self.stream.close()
            FileSystems.rename([self.temp], [FileSystems.join(self.run_dir, self.name)])
            self.stream = None


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
