"""`retrain-extract`'s Beam pipeline: image files -> bottleneck vectors, written as one shard run.

    MatchFiles -> Reshuffle (else every file stays on the worker that listed them) -> ReadMatches
    -> hash; skip what the cache has; decode (retrainer's discovery rule and decoder)
    -> RunInference (KeyedModelHandler keyed by content SHA-256, retrainer's own extractor)
    -> WriteToTFRecord (Beam's temp + finalize) -> manifest, then the marker (retrainer/cache/shards.py)

Unreadable images go to a dead-letter output: counted, named in the manifest and the result,
never fatal. The vectors are the single-machine path's (same engine and precision, hence the same
cache namespace, decode and model call), so a following `retrain --bottleneck_dir DIR` computes
nothing. `--extractor_precision auto` is resolved once, on the machine that launches the pipeline,
by `retrain`'s rule, and the workers run that precision. Paths may be local or
anything Beam's file systems read (gs:// with apache-beam[gcp]).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import time
from typing import Any, Iterator, Optional

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import WriteToTFRecord
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from retrainer.beam.model_handler import BottleneckModelHandler
from retrainer.cache.bottlenecks import DEFAULT_BATCH_SIZE
from retrainer.cache.layout import extractor_folder, shards_folder
from retrainer.cache.shards import (
    RUN_ID_TIME,
    SHARD_PREFIX,
    SHARD_SUFFIX,
    cached_digests,
    encode_record,
    finished_runs,
    read_manifest,
    remove_abandoned_runs,
    write_manifest_then_marker,
)
from retrainer.data.batches import content_digest
from retrainer.data.decoding import UnreadableImageError, decode_image
from retrainer.data.names import is_image_relpath
from retrainer.engines import AUTO, PRECISIONS
from retrainer.engines.factory import create_engine
from retrainer.errors import UsageError
from retrainer.extractors import create_extractor

log = logging.getLogger(__name__)

UNREADABLE = "unreadable"
CACHED = "cached"
# Beam's default DirectRunner may hand the pipeline to Prism, which downloads a binary at run time.
DEFAULT_RUNNER = "FnApiRunner"


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    """What `retrain-extract` computes (the flags `retrain` shares keep its names and defaults)."""

    image_dir: str
    bottleneck_dir: str
    tfhub_module: str  # the CLI's default is retrain's (retrainer.config.DEFAULT_EXTRACTOR)
    image_size: Optional[int] = None
    batch_size: int = DEFAULT_BATCH_SIZE
    extractor_precision: str = AUTO
    trust_model: bool = False  # load --tfhub_module without checking its ops (docs/security.md)

    def __post_init__(self) -> None:
        if self.extractor_precision not in (AUTO, *PRECISIONS):
            raise UsageError(f"--extractor_precision must be one of {[AUTO, *PRECISIONS]}. "
                             f"Received: {self.extractor_precision!r}.")
        if self.batch_size < 1:
            raise UsageError(f"--batch_size must be at least 1. Received: {self.batch_size!r}.")
        if self.image_size is not None and self.image_size < 1:
            raise UsageError(f"--image_size must be a positive size. Received: {self.image_size!r}.")


@dataclasses.dataclass(frozen=True)
class ExtractResult:
    """What a run did; `to_json()` is the `--json` document.

    Attributes:
        namespace: the extractor's cache folder the run wrote into (one per precision).
        extractor_precision: the precision the workers ran (`auto` resolved).
        run_dir: the finished shard run, or None when there was nothing new to compute.
        computed: vectors computed and written.
        already_cached: images skipped because the cache had their vectors.
        unreadable: (path, reason) of each image that could not be read or decoded.
        seconds: wall time, pipeline start-up included.
    """

    namespace: str
    extractor_precision: str
    run_dir: Optional[str]
    computed: int
    already_cached: int
    unreadable: tuple[tuple[str, str], ...]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        document = dataclasses.asdict(self)
        document["unreadable"] = [{"path": path, "reason": reason}
                                  for path, reason in self.unreadable]
        return document


def run_extraction(config: ExtractConfig, beam_args: list[str]) -> ExtractResult:
    """Compute the missing bottleneck vectors of `config.image_dir` with Beam, as one shard run.

    Args:
        config: what to extract and where to cache it.
        beam_args: Beam pipeline options (`--runner`, `--direct_num_workers`, `--project`, ...).

    Returns:
        ExtractResult.

    Raises:
        UsageError: --image_dir is not a folder; unknown extractor; a precision this machine or
            extractor cannot run.
        UntrustedModelError: the module failed the model check (before anything is written).
        ModelError: the extractor cannot be loaded.
    """
    started = time.perf_counter()
    image_dir = _absolute(config.image_dir)
    for flag, path in (("image_dir", image_dir), ("bottleneck_dir", config.bottleneck_dir)):
        _check_file_system(flag, path)
    if not _has_entries(image_dir):
        raise UsageError(f"Image directory {config.image_dir!r} does not exist or is empty; pass "
                         "--image_dir a folder with one sub-folder of images per class.")
    # Built here once for its spec (the cache namespace), so a bad module or precision fails
    # before the run; this also resolves `auto` and fills the converted-model cache (int8) that
    # local workers then load from.
    engine = create_engine(create_extractor(config.tfhub_module, config.image_size,
                                            config.trust_model),
                           config.extractor_precision)
    spec, precision = engine.spec, engine.precision
    del engine
    cache_dir = os.fspath(extractor_folder(_absolute(config.bottleneck_dir), spec))
    remove_abandoned_runs(cache_dir)  # runs of killed writers, old enough to be dead
    run_dir = FileSystems.join(shards_folder(cache_dir), _new_run_id())
    options = PipelineOptions(beam_args)
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = DEFAULT_RUNNER
    log.info("Extracting %s %s vectors of %s into %s.", spec.name, precision, image_dir, run_dir)
    with beam.Pipeline(options=options) as pipeline:
        _build(pipeline, dataclasses.replace(config, extractor_precision=precision), image_dir,
               cache_dir, run_dir, spec)
    if run_dir not in finished_runs(cache_dir):
        raise RuntimeError(f"The pipeline finished but did not complete the shard run {run_dir}.")
    manifest = read_manifest(run_dir)
    unreadable = tuple((item["path"], item["reason"]) for item in manifest["unreadable"])
    for path, reason in unreadable:
        log.warning("Skipping %s: %s", path, reason)
    if manifest["vectors"] == 0:  # nothing new: leave no empty run behind
        FileSystems.delete([run_dir])
    return ExtractResult(
        namespace=cache_dir,
        extractor_precision=precision,
        run_dir=run_dir if manifest["vectors"] else None,
        computed=manifest["vectors"],
        already_cached=manifest["already_cached"],
        unreadable=unreadable,
        seconds=time.perf_counter() - started,
    )


def _build(pipeline: beam.Pipeline, config: ExtractConfig, image_dir: str, cache_dir: str,
           run_dir: str, spec: Any) -> None:
    cached = beam.pvalue.AsDict(
        pipeline
        | "CacheFolder" >> beam.Create([cache_dir])
        | "ListCached" >> beam.FlatMap(lambda folder: ((digest, True)
                                                      for digest in cached_digests(folder)))
    )
    decoded = (
        pipeline
        | "Match" >> fileio.MatchFiles(FileSystems.join(image_dir, "**"))
        | "Spread" >> beam.Reshuffle()
        | "Read" >> fileio.ReadMatches()
        | "HashDecode" >> beam.ParDo(_HashAndDecode(image_dir, spec.input_size), cached)
        .with_outputs(UNREADABLE, CACHED, main="pixels")
    )
    handler = KeyedModelHandler(
        BottleneckModelHandler(config.tfhub_module, config.image_size, config.batch_size,
                               config.extractor_precision, config.trust_model)
    )
    vectors = decoded.pixels | "Extract" >> RunInference(handler)
    shard_paths = (
        vectors
        | "Encode" >> beam.MapTuple(_encode)
        | "Write" >> WriteToTFRecord(FileSystems.join(run_dir, SHARD_PREFIX),
                                     file_name_suffix=SHARD_SUFFIX)
    )
    manifest = {"extractor_id": spec.id, "extractor": spec.name,
                "extractor_precision": config.extractor_precision,
                "input_size": list(spec.input_size), "vector_size": spec.vector_size}
    _ = (
        shard_paths
        | "ShardList" >> beam.combiners.ToList()
        | "Finish" >> beam.Map(
            _finish_run, run_dir, manifest,
            vectors=beam.pvalue.AsSingleton(
                vectors | "CountVectors" >> beam.combiners.Count.Globally()),
            already_cached=beam.pvalue.AsSingleton(
                decoded[CACHED] | "CountCached" >> beam.combiners.Count.Globally()),
            unreadable=beam.pvalue.AsList(decoded[UNREADABLE]),
        )
    )


class _HashAndDecode(beam.DoFn):
    """ReadableFile -> (sha256, uint8 [H, W, 3]); cached hashes and unreadable files to side outputs.

    Files outside discovery's rules (hidden, not in a class folder, not an image name) are dropped.
    """

    def __init__(self, image_dir: str, input_size: tuple[int, int]) -> None:
        self.image_dir = image_dir.rstrip("/")
        self.input_size = input_size
        self.unreadable_count = beam.metrics.Metrics.counter("retrain_extract", "unreadable")
        self.cached_count = beam.metrics.Metrics.counter("retrain_extract", "already_cached")

    def process(self, readable_file: Any, cached: Any) -> Iterator[Any]:
        path = readable_file.metadata.path
        if not is_image_relpath(path[len(self.image_dir) + 1:]):
            return
        try:
            data = readable_file.read()
        except OSError as error:
            self.unreadable_count.inc()
            yield beam.pvalue.TaggedOutput(UNREADABLE, (path, f"cannot read file ({error})"))
            return
        digest = content_digest(data)
        if digest in cached:
            self.cached_count.inc()
            yield beam.pvalue.TaggedOutput(CACHED, digest)
            return
        try:
            yield digest, decode_image(data, self.input_size, path)
        except UnreadableImageError as error:
            self.unreadable_count.inc()
            yield beam.pvalue.TaggedOutput(UNREADABLE, (path, error.reason))


def _encode(digest: str, prediction: Any) -> bytes:
    return encode_record(digest, prediction.inference)


def _finish_run(shard_paths: list[str], run_dir: str, manifest: dict[str, Any], vectors: int,
                already_cached: int, unreadable: list[tuple[str, str]]) -> None:
    """Runs once, after every shard is finalized: the manifest, then the marker."""
    write_manifest_then_marker(run_dir, {
        **manifest,
        "shards": sorted(FileSystems.split(os.fspath(path))[1] for path in shard_paths),
        "vectors": vectors,
        "already_cached": already_cached,
        "unreadable": [{"path": path, "reason": reason} for path, reason in sorted(unreadable)],
    })


def _check_file_system(flag: str, path: str) -> None:
    """Beam's file systems read the images and write the shards: a scheme they lack is a usage
    error (ram:// is TensorFlow's only, and one process's; gs:// needs apache-beam[gcp])."""
    try:
        FileSystems.get_filesystem(path)
    except ValueError:
        scheme = path.split("://", 1)[0]
        raise UsageError(
            f"--{flag} {path}: Beam has no file system for {scheme}:// here (gs:// needs "
            "pip install 'apache-beam[gcp]'; ram:// exists only inside one process); pass a local "
            "path or a gs:// URL."
        ) from None


def _has_entries(folder: str) -> bool:
    try:
        return bool(FileSystems.match([FileSystems.join(folder, "**")], limits=[1])[0].metadata_list)
    except (OSError, beam.io.filesystem.BeamIOError):
        return False


def _absolute(path: str) -> str:
    """Local paths made absolute; URLs (gs://...) as given."""
    return path if "://" in path else os.path.abspath(path)


def _new_run_id() -> str:
    """Sorts by start time; the random part keeps concurrent runs apart."""
    return time.strftime(RUN_ID_TIME, time.gmtime()) + "-" + secrets.token_hex(4)
