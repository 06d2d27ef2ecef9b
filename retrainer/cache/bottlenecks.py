"""Bottleneck stage: each image's feature vector, computed once per extractor and cached on disk.

Vectors come from the cache (`entries`: one `.npy` entry per image content, in the extractor's
namespace), or from the shard runs `retrain-extract` wrote there (`shards`); the rest are computed:
a thread pool decodes a few batches ahead (`retrainer.data.batches.decoded_batches`), the
extractor's engine (`retrainer.engines`: float32, bfloat16 or int8) runs each batch, and its
entries are stored as they come, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Collection, Iterator, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from retrainer.cache.entries import BottleneckCache
from retrainer.cache.file_index import FileIndex
from retrainer.cache.layout import shards_folder
from retrainer.cache.signatures import SignatureCache
from retrainer.data.batches import content_digest, decoded_batches
from retrainer.data.signatures import Signatures
from retrainer.engines import Engine
from retrainer.io.host import release_free_memory
from retrainer.io.storage import as_path, is_url, read_bytes

if TYPE_CHECKING:  # a vector cache of any extractor needs no TensorFlow to be read
    from retrainer.extractors import FeatureExtractor

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32
# The cache lookup reads every file to hash it; the bytes of files it misses are kept, up to this
# many in all, for the decoder, so that those files are not read twice.
KEPT_BYTES = 64 << 20
READ_BATCH = 4  # files read and hashed per task
READ_THREADS = 8  # tasks in flight
# Files are read and hashed on the calling thread until one is this large or this slow to read
# (a disk, not the page cache); the rest then on READ_THREADS threads.
SERIAL_BYTES = 64 << 10
SERIAL_SECONDS = 0.001


@dataclasses.dataclass(frozen=True)
class Bottlenecks:
    """Vectors for a list of image files, in the order asked for.

    Attributes:
        vectors: float32 [N, D]; rows of skipped files are zeros.
        ok: bool [N], False for files that could not be read or decoded.
        skipped: (index, reason) for each file left out.
        computed: vectors computed in this call.
        reused: vectors read from the cache.
        seconds: wall time of the call.
        digests: hex SHA-256 of each file's bytes (the cache key), "" where it could not be read.
        signatures: the audit's signature of each image, when asked for (from the decode that
            made its vector, or from the cache beside the vectors); empty where skipped.
        mirrored: {position: uint8 [H, W, 3] mirror image} of the asked positions whose vectors
            were computed here (from the same decode).
    """

    vectors: np.ndarray
    ok: np.ndarray
    skipped: tuple[tuple[int, str], ...]
    computed: int
    reused: int
    seconds: float
    digests: tuple[str, ...] = ()
    signatures: Optional[Signatures] = None
    mirrored: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)


def compute_bottlenecks(
    paths: Sequence[os.PathLike[str] | str],
    extractor: FeatureExtractor | Engine,
    bottleneck_dir: os.PathLike[str] | str,
    batch_size: int = DEFAULT_BATCH_SIZE,
    show_progress: bool = True,
    file_index: Optional[FileIndex] = None,
    signatures: bool = False,
    mirrored: Collection[int] = (),
) -> Bottlenecks:
    """Vectors for `paths`: from the cache where present, computed (and cached) otherwise.

    Args:
        paths: image files, in the order the result should follow.
        extractor: the feature extractor, or an engine running one at a precision
            (`retrainer.engines`; an extractor runs in float32); its spec.id names the cache
            namespace.
        bottleneck_dir: the cache root.
        batch_size: images per extractor call.
        show_progress: show a tqdm bar on stderr (only when stderr is a terminal).
        file_index: the dataset's file index, already `look_up`-ed for `paths`: files whose digest it
            knows are not read; it records the digests of the others.
        signatures: also the audit's signature of each image: made by the decode that computes
            its vector, read from the signature cache, or (a cached vector without one) decoded
            for it alone; new ones are cached.

    Returns:
        Bottlenecks aligned with `paths`. Unreadable files are skipped with a warning naming them.
    """
    started = time.perf_counter()
    engine = extractor if isinstance(extractor, Engine) else _float32_engine(extractor)
    spec = engine.spec
    cache = BottleneckCache(as_path(bottleneck_dir), spec)
    vectors = np.zeros((len(paths), spec.vector_size), np.float32)
    ok = np.zeros(len(paths), bool)
    skipped: dict[int, str] = {}
    digests = list(file_index.known) if file_index is not None else [""] * len(paths)
    kept_bytes: dict[int, bytes] = {}  # of the files read now, up to KEPT_BYTES in all
    kept = 0
    to_read = [position for position, digest in enumerate(digests) if not digest]  # not vouched for
    read = _read_and_hashed([paths[position] for position in to_read])
    for position, (data, digest, reason) in zip(to_read, read):
        if reason:
            skipped[position] = reason
            continue
        digests[position] = digest
        if kept + len(data) <= KEPT_BYTES:
            kept_bytes[position], kept = data, kept + len(data)
    for position, stored in _sharded_vectors(os.fspath(cache.directory), spec.vector_size,
                                             digests):
        vectors[position], ok[position] = stored, True
    cache.load_many(digests, vectors, ok)
    missing = [position for position, digest in enumerate(digests) if digest and not ok[position]]
    contents = [kept_bytes.pop(position, None) for position in missing]
    kept_bytes.clear()
    if file_index is not None:
        file_index.update(digests)
    reused = int(ok.sum())
    signature_cache = SignatureCache(bottleneck_dir, spec.input_size) if signatures else None
    made, known = signature_cache.lookup(digests) if signature_cache else (None, None)
    kept_mirrored: dict[int, np.ndarray] = {}
    if missing:
        log.info(
            "Computing bottleneck vectors of %d images with %s (%d cached in %s).",
            len(missing), spec.name, reused, cache.directory,
        )
        missing_paths = [paths[position] for position in missing]
        missing_digests = [digests[position] for position in missing]
        wanted = set(mirrored)
        for index, vector, reason, signature in _computed(
                missing_paths, missing_digests, contents, engine, cache, batch_size,
                show_progress, signatures,
                {index for index, position in enumerate(missing) if position in wanted},
                kept_mirrored):
            if reason:
                skipped[missing[index]] = reason
            else:
                vectors[missing[index]], ok[missing[index]] = vector, True
                if made is not None and signature is not None:
                    made.thumbnails[missing[index]], made.hashes[missing[index]] = signature
    if signature_cache is not None and made is not None and known is not None:
        decoded = set(missing)
        unsigned = [int(position) for position in np.flatnonzero(ok & ~known)
                    if position not in decoded]
        _sign_cached(paths, digests, unsigned, spec.input_size, batch_size, made, skipped, ok)
        fresh = np.flatnonzero(ok & ~known)
        signature_cache.store([digests[position] for position in fresh], made.take(fresh))
    for position, reason in sorted(skipped.items()):
        log.warning("Skipping %s: %s", paths[position], reason)
    release_free_memory()  # the readers' threads' buffers: hundreds of MB at a million files
    return Bottlenecks(
        vectors=vectors,
        ok=ok,
        skipped=tuple(sorted(skipped.items())),
        computed=int(ok.sum()) - reused,
        reused=reused,
        seconds=time.perf_counter() - started,
        digests=tuple(digests),
        signatures=made,
        mirrored={missing[index]: pixels for index, pixels in kept_mirrored.items()},
    )


def _read_and_hashed(paths: Sequence[os.PathLike[str] | str]) -> Iterator[tuple[bytes, str, str]]:
    """(bytes, hex SHA-256, "") of each file in order, or (b"", "", reason) if unreadable.

    Small files in the page cache are read and hashed one after another on this thread: on
    threads the GIL's hand-offs cost more than their work (1,000 Fashion-MNIST PNGs of ~300
    bytes: 8-10 ms here, 27-80 ms on 8 threads, the bottleneck stage's start waiting). From the
    first file of SERIAL_BYTES or more, or slower than SERIAL_SECONDS to read (a disk), the rest
    are read and hashed on every CPU, a chunk at a time (hashing a 3 MB camera JPEG costs
    ~3 ms, a sixth of decoding it; serially it held the decoders back by that much; 400 files
    of 256 KB: 79 ms on threads, 117 ms here)."""
    def read(path: os.PathLike[str] | str) -> tuple[bytes, str, str]:
        try:
            data = read_bytes(path)
        except OSError as error:
            return b"", "", f"cannot read file ({error.strerror or error})"
        return data, content_digest(data), ""

    def read_all(batch: Sequence[os.PathLike[str] | str]) -> list[tuple[bytes, str, str]]:
        return [read(path) for path in batch]

    serial = 0
    while serial < len(paths):
        started = time.perf_counter()
        result = read(paths[serial])
        slow = time.perf_counter() - started >= SERIAL_SECONDS
        serial += 1
        yield result
        if slow or len(result[0]) >= SERIAL_BYTES:
            break
    # Each task reads READ_BATCH files (a task per file cost more than a small file's read and
    # hash: 47 us a file at 70,000 PNGs of 300 bytes); READ_THREADS tasks in flight, so that a
    # first run on files the page cache lost keeps the disk busy (32 files: ~100 MB of camera
    # JPEGs).
    rest = paths[serial:]
    if not rest:
        return
    with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="hash") as pool:
        pending: deque[Future[list[tuple[bytes, str, str]]]] = deque()
        for first in range(0, len(rest), READ_BATCH):
            pending.append(pool.submit(read_all, rest[first:first + READ_BATCH]))
            if len(pending) >= READ_THREADS:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def _sign_cached(paths: Sequence[os.PathLike[str] | str], digests: list[str], positions: Sequence[int],
                 input_size: tuple[int, int], batch_size: int, made: Signatures,
                 skipped: dict[int, str], ok: np.ndarray) -> None:
    """Signatures of images whose vectors were cached but not their signatures (vectors from
    `retrain-extract`, or from a run without the audit): decoded for them alone, into `made`."""
    if not len(positions):
        return
    log.info("Decoding %d images for their audit signatures (their vectors were cached).",
             len(positions))
    chosen = [paths[position] for position in positions]
    for batch in decoded_batches(chosen, input_size, batch_size,
                                 [digests[position] for position in positions],
                                 [None] * len(positions), signatures=True):
        assert batch.signatures is not None
        for row, reason in enumerate(batch.reasons):
            position = positions[batch.start + row]
            if reason:  # readable moments ago, for its vector
                skipped[position], ok[position] = reason, False
            else:
                made.thumbnails[position] = batch.signatures.thumbnails[row]
                made.hashes[position] = batch.signatures.hashes[row]


def _computed(
    paths: Sequence[os.PathLike[str] | str],
    digests: list[str],
    contents: list[Optional[bytes]],
    engine: Engine,
    cache: BottleneckCache,
    batch_size: int,
    show_progress: bool,
    signatures: bool = False,
    mirror: Collection[int] = (),
    mirrored: Optional[dict[int, np.ndarray]] = None,
) -> Iterator[tuple[int, Optional[np.ndarray], str, Optional[tuple[np.ndarray, np.uint64]]]]:
    """Run the pipeline over `paths` (whose `digests`, and some `contents`, are known), caching
    each batch's vectors; the mirror images of the decoded images at `mirror` (indices into
    `paths`) go into `mirrored`.

    Entries are written on a background thread while the extractor works on the next batch; write
    errors surface on the next batch, and pending writes finish even when interrupted.

    Yields:
        (index into `paths`, float32 [D] vector or None, reason it was skipped or "", its
        signature (thumbnail, hash) when asked for and decoded, else None).
    """
    writes: list[Future[None]] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bottleneck-writer") as writer, \
            tqdm(total=len(paths), unit="img", desc="Bottlenecks", dynamic_ncols=True,
                 disable=None if show_progress else True) as progress:
        # A batch of only undecodable files (e.g. a rerun) need not even trace the model.
        for batch, batch_vectors in engine.map(
                decoded_batches(paths, engine.spec.input_size, batch_size, digests, contents,
                                signatures),
                lambda batch: batch.images[:0] if all(batch.reasons) else batch.images):
            entries = []
            made = batch.signatures
            for row, reason in enumerate(batch.reasons):
                index = batch.start + row
                if reason:
                    yield index, None, reason, None
                else:
                    entries.append((digests[index], batch_vectors[row]))
                    if index in mirror and mirrored is not None:
                        mirrored[index] = np.ascontiguousarray(batch.images[row, :, ::-1])
                    signature = None if made is None else (made.thumbnails[row], made.hashes[row])
                    yield index, batch_vectors[row], "", signature
            for write in [write for write in writes if write.done()]:
                write.result()
                writes.remove(write)
            writes.append(writer.submit(cache.store_all, entries))
            progress.update(len(batch.reasons))
    for write in writes:
        write.result()



def _sharded_vectors(namespace: str, vector_size: int, digests: list[str]
                     ) -> Iterator[tuple[int, np.ndarray]]:
    """(position, vector) of each digest retrain-extract's shard runs hold (TFRecords: read with
    TensorFlow, imported only when a local cache has shard runs at all)."""
    if not is_url(namespace) and not os.path.isdir(shards_folder(namespace)):
        return
    from retrainer.cache.shards import load_sharded

    sharded = load_sharded(namespace, vector_size)
    for position, digest in enumerate(digests):
        vector = sharded.get(digest) if digest else None
        if vector is not None:
            yield position, vector


def _float32_engine(extractor: FeatureExtractor) -> Engine:
    """An extractor run by the float32 engine (TensorFlow)."""
    from retrainer.engines.factory import as_engine

    return as_engine(extractor)
