"""`retrain-extract`'s Beam pipeline: image files -> bottleneck vectors, written as one shard run.

    list the image files (MatchFiles -> Reshuffle on the workers; in the launcher on Dask)
    -> batches of paths -> per batch: hash, skip what the cache has, decode (retrainer's
    discovery rule and decoder), run retrain's engine, append to the bundle's TFRecord shard
    -> one summary -> manifest, then the marker (retrainer/cache/shards.py)

Unreadable images are counted and named in the manifest and the result, never fatal. The vectors
are the single-machine path's (same engine and precision, hence the same cache namespace, decode
and model call), so a following `retrain --bottleneck_dir DIR` computes nothing.
`--extractor_precision auto` is resolved once, on the machine that launches the pipeline, by
`retrain`'s rule, and the workers run that precision. Paths may be local or anything Beam's file
systems read (gs:// with apache-beam[gcp]). The steps (retrainer/beam/transforms.py) avoid what
Beam's DaskRunner does not carry, so the pipeline runs the same on every runner.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import time
from typing import Any, Optional

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from retrainer.beam.runners import is_dask, pipeline_options, run_pipeline
from retrainer.beam.transforms import (
    Extraction,
    ExtractShards,
    MergeSummaries,
    batches,
    image_paths,
    remove_unnamed_files,
    summary,
)
from retrainer.cache.bottlenecks import DEFAULT_BATCH_SIZE
from retrainer.cache.layout import extractor_folder, shards_folder
from retrainer.cache.shards import (
    RUN_ID_TIME,
    finished_runs,
    read_manifest,
    remove_abandoned_runs,
    write_manifest_then_marker,
)
from retrainer.engines import AUTO, PRECISIONS
from retrainer.engines.factory import create_engine
from retrainer.errors import UsageError
from retrainer.extractors import create_extractor

log = logging.getLogger(__name__)


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
        UsageError: --image_dir is not a folder; unknown extractor or runner; a precision this
            machine or extractor cannot run; the Dask cluster cannot be reached or lost the run.
        UntrustedModelError: the module failed the model check (before anything is written).
        ModelError: the extractor cannot be loaded.
    """
    started = time.perf_counter()
    options = pipeline_options(beam_args, config.batch_size)  # a bad --runner fails first
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
    log.info("Extracting %s %s vectors of %s into %s.", spec.name, precision, image_dir, run_dir)
    pipeline = beam.Pipeline(options=options)
    _build(pipeline, dataclasses.replace(config, extractor_precision=precision), image_dir,
           cache_dir, run_dir, spec, is_dask(options))
    run_pipeline(pipeline)
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
           run_dir: str, spec: Any, on_dask: bool) -> None:
    if on_dask:  # its Reshuffle keeps everything in one task: list here, one element per batch
        listed = FileSystems.match([FileSystems.join(image_dir, "**")])[0].metadata_list
        paths = image_paths(image_dir, [item.path for item in listed])
        batched = pipeline | "Batches" >> beam.Create(batches(paths, config.batch_size) or [[]])
    else:  # listed by the workers, and spread over them (Reshuffle) before batching
        batched = (
            pipeline
            | "Match" >> fileio.MatchFiles(FileSystems.join(image_dir, "**"))
            | "Images" >> beam.FlatMap(lambda item: image_paths(image_dir, [item.path]))
            | "Spread" >> beam.Reshuffle()
            | "Batch" >> beam.BatchElements(min_batch_size=config.batch_size,
                                            max_batch_size=config.batch_size)
        )
    extraction = Extraction(config.tfhub_module, config.image_size, config.extractor_precision,
                            config.trust_model, tuple(spec.input_size), cache_dir, run_dir)
    summaries = batched | "Extract" >> beam.ParDo(ExtractShards(extraction))
    start = pipeline | "Start" >> beam.Create([summary()])  # a summary even without images
    manifest = {"extractor_id": spec.id, "extractor": spec.name,
                "extractor_precision": config.extractor_precision,
                "input_size": list(spec.input_size), "vector_size": spec.vector_size}
    _ = (
        (summaries, start)
        | "Summaries" >> beam.Flatten()
        | "Summarize" >> beam.CombineGlobally(MergeSummaries()).without_defaults()
        | "Finish" >> beam.Map(_finish_run, run_dir, manifest)
    )


def _finish_run(total: dict[str, Any], run_dir: str, manifest: dict[str, Any]) -> None:
    """Runs once, after every shard is written: the manifest, then the marker."""
    if not FileSystems.exists(run_dir):  # no shard: every image cached or unreadable
        FileSystems.mkdirs(run_dir)
    remove_unnamed_files(run_dir, total["shards"])
    write_manifest_then_marker(run_dir, {
        **manifest,
        "shards": total["shards"],
        "vectors": total["vectors"],
        "already_cached": total["already_cached"],
        "unreadable": [{"path": path, "reason": reason} for path, reason in total["unreadable"]],
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
