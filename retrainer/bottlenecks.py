"""Bottleneck stage: each image's feature vector, computed once per extractor and cached on disk.

Cache layout: `<bottleneck_dir>/<extractor id>/<CACHE_FORMAT>-<H>x<W>/<aa>/<sha256>.npy`, one
`.npy` entry per image, keyed by the SHA-256 of the file's bytes. So an edited image gets a new key
(a stale vector can never be served), a renamed or moved image keeps its entry, a different
extractor never sees another's vectors, and no dataset path ever appears in a cache path. The
entries of one batch are hard links to one pack file holding their vectors (`_vector_packs`: one
file created per batch, not per image); a lone entry, or one in a remote cache, is a plain float32
[D] `.npy`. Files are written under a temp name and renamed or linked into place: a run killed at
any moment leaves only whole entries, the next run recomputes only what is missing, and runs
sharing a cache do not collide. Unreadable entries are recomputed with a warning. Vectors written
by `retrain-extract` as TFRecord shard runs in the same folder (retrainer/shards.py) are read
alike.

Missing vectors are computed by a thread pool decoding a few batches ahead (`decoded_batches`),
feeding the extractor's engine (`retrainer.engines`: float32, bfloat16 or int8), and stored batch
by batch as they come.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import io
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator, Optional, Sequence

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from retrainer._files import making_folder, write_bytes_atomically, write_linked_atomically
from retrainer._vector_packs import PackReader, pack_bytes
from retrainer.engines import Engine, as_engine
from retrainer.engines.cpu import usable_cpus
from retrainer.engines.float32 import feature_function  # noqa: F401  (fine-tuning imports it here)
from retrainer.extractors import ExtractorSpec, FeatureExtractor
from retrainer.images import UnreadableImageError, decode_image
from retrainer.shards import load_sharded
from retrainer.storage import AnyPath, as_path, is_url, open_for_reading, read_bytes

log = logging.getLogger(__name__)

# Bump when the stored format or the pixels fed to extractors (decoding, resizing) change.
CACHE_FORMAT = "v1"
DEFAULT_BATCH_SIZE = 32
# Fixed decode parallelism and read-ahead, with tf.data autotuning off: its background thread made
# iterator teardown stall for 1-2 s at random (measured with benchmarks/bench_pipeline.py), and
# decoding on every core, two batches ahead, already keeps the extractor busy.
PREFETCH_BATCHES = 2
# The cache lookup reads every file to hash it; the bytes of files it misses are kept, up to this
# many in all, for the decoder, so that those files are not read twice.
KEPT_BYTES = 64 << 20


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
    """

    vectors: np.ndarray
    ok: np.ndarray
    skipped: tuple[tuple[int, str], ...]
    computed: int
    reused: int
    seconds: float
    digests: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class BottleneckCache:
    """The cache namespace of one extractor (see the module docstring for the layout).

    `namespace` (a relative folder, e.g. distortion settings) separates vectors of transformed
    images from the plain ones; keys are then `<digest>` plus whatever the caller appends.
    """

    root: AnyPath  # a local folder or a URL (retrainer.storage)
    spec: ExtractorSpec
    namespace: str = ""
    _reader: PackReader = dataclasses.field(default_factory=PackReader, compare=False,
                                            repr=False)

    @property
    def directory(self) -> AnyPath:
        return as_path(self.root) / namespace(self.spec) / self.namespace

    def path(self, digest: str) -> AnyPath:
        return self.directory / digest[:2] / f"{digest}.npy"

    def load(self, digest: str) -> Optional[np.ndarray]:
        """The cached float32 [D] vector; None if absent or unusable (warned, then recomputed)."""
        path = self.path(digest)
        try:
            with open_for_reading(path) as stream:
                vector = self._reader.read(stream, digest)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as error:
            log.warning("Cached bottleneck %s is unreadable (%s); recomputing it.", path, error)
            return None
        expected = (self.spec.vector_size,)
        if vector.dtype != np.float32 or vector.shape != expected or not np.isfinite(vector).all():
            log.warning(
                "Cached bottleneck %s is not a finite float32 %s vector (found %s %s); "
                "recomputing it.",
                path, expected, vector.dtype, vector.shape,
            )
            return None
        return vector

    def store(self, digest: str, vector: np.ndarray) -> None:
        """Write one entry atomically (temp file in the same folder, then rename over)."""
        path = self.path(digest)
        vector = np.asarray(vector, np.float32)
        data = _npy_header(vector.shape) + vector.tobytes()  # what np.save writes, made cheaper
        making_folder(path, lambda: write_bytes_atomically(path, data))

    def store_all(self, entries: Sequence[tuple[str, np.ndarray]]) -> None:
        """Write entries together: in a local folder, one pack linked under each entry's name."""
        linked = 0
        if len(entries) > 1 and not is_url(self.directory):
            linked = write_linked_atomically([self.path(key) for key, _ in entries],
                                             pack_bytes(entries))
        for key, vector in entries[linked:]:  # remote, alone, or no hard links here
            self.store(key, vector)


def read_entry(path: AnyPath) -> np.ndarray:
    """The array one entry file holds (its row of a pack, or a plain `.npy`), unchecked."""
    with open_for_reading(path) as stream:
        return PackReader().read(stream, as_path(path).name.removesuffix(".npy"))


@functools.lru_cache(maxsize=8)
def _npy_header(shape: tuple[int, ...]) -> bytes:
    """The `.npy` header np.save writes for a float32 array of `shape`."""
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(shape, np.float32), allow_pickle=False)
    return buffer.getvalue()[: -4 * int(np.prod(shape))]


def namespace(spec: ExtractorSpec) -> str:
    """The cache folder of one extractor, relative to the cache root: "<id>/<format>-<H>x<W>"."""
    height, width = spec.input_size
    return f"{spec.id}/{CACHE_FORMAT}-{height}x{width}"


def content_digest(data: bytes) -> str:
    """Hex SHA-256 of an image file's bytes (the cache key)."""
    return hashlib.sha256(data).hexdigest()


def file_digest(path: os.PathLike[str] | str) -> str:
    """Hex SHA-256 of a file's bytes (the cache key)."""
    return content_digest(read_bytes(path))


def _decoded_file(
    path: os.PathLike[str] | str, input_size: tuple[int, int], digest: str = "",
    out: Optional[np.ndarray] = None, data: Optional[bytes] = None,
) -> tuple[np.ndarray, str, str]:
    """(uint8 [H, W, 3] pixels, digest, reason): black pixels and a reason if undecodable.

    The digest is computed from the bytes decoded unless the caller already knows it, and the
    file is read unless its bytes are given. With `out`, the pixels are written into it (black if
    undecodable).
    """
    try:
        data = read_bytes(path) if data is None else data
        pixels = decode_image(data, input_size, path, out)
        return pixels, digest or content_digest(data), ""
    except UnreadableImageError as error:
        reason = error.reason
    except OSError as error:
        reason = f"cannot read file ({error.strerror or error})"
    if out is None:
        return np.zeros((*input_size, 3), np.uint8), "", reason
    out[...] = 0
    return out, "", reason


def decoded_images(
    paths: Sequence[os.PathLike[str] | str], input_size: tuple[int, int], batch_size: int,
    deterministic: bool = False,
) -> tf.data.Dataset:
    """A tf.data pipeline that reads, hashes and decodes files in parallel, in batches.

    Undecodable files do not stop the pipeline: they come out as black images with a reason.

    Args:
        paths: image files.
        input_size: (height, width) to resize to.
        batch_size: images per batch.
        deterministic: keep the files' order (training batches); False lets a slow file be
            overtaken.

    Returns:
        Dataset of batches (positions int64 [B] into `paths`, images uint8 [B, H, W, 3],
        digests string [B] = SHA-256 of the bytes decoded, reasons string [B] = "" when decoded).
        Unless `deterministic`, rows may come out of order (positions say which file each is).
    """
    height, width = input_size

    def load(encoded_path: bytes) -> tuple[np.ndarray, bytes, bytes]:
        pixels, digest, reason = _decoded_file(os.fsdecode(encoded_path), input_size)
        return pixels, digest.encode(), reason.encode()

    def load_one(position: tf.Tensor, path: tf.Tensor):
        pixels, digest, reason = tf.numpy_function(
            load, [path], [tf.uint8, tf.string, tf.string], stateful=False
        )
        return position, tf.ensure_shape(pixels, [height, width, 3]), digest, reason

    encoded = [os.fsencode(path) for path in paths]
    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.range(len(encoded), dtype=tf.int64), tf.constant(encoded, tf.string, [len(encoded)]))
    )
    dataset = dataset.map(load_one, num_parallel_calls=usable_cpus(),
                          deterministic=deterministic)
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.batch(batch_size).prefetch(PREFETCH_BATCHES).with_options(options)


@dataclasses.dataclass(frozen=True)
class DecodedBatch:
    """One batch of `decoded_batches`: row i is file `start + i`."""

    start: int
    images: np.ndarray  # uint8 [B, H, W, 3]
    reasons: list[str]  # "" where decoded


def decoded_batches(
    paths: Sequence[os.PathLike[str] | str], input_size: tuple[int, int], batch_size: int,
    digests: Sequence[str], contents: Sequence[Optional[bytes]],
) -> Iterator[DecodedBatch]:
    """Decode `paths` in order, in batches, on a thread pool: `PREFETCH_BATCHES` batches ahead.

    The bottleneck stage's decoder. Plain threads (Pillow releases the GIL) and numpy batches:
    with tf.data's map and `numpy_function` each image cost twice the CPU of its decode (0.83 vs
    0.37 ms for a Fashion-MNIST PNG, benchmarks/bench_pipeline.py), which the engine lost on 2 cores.
    Each thread decodes a slice of a batch straight into the batch's rows (one task per thread
    and batch, not per image), so the consumer's thread (the engine's) only waits. The files'
    digests are known (the cache lookup computed them): not hashed again; nor read again where
    `contents` has their bytes (None where it does not).
    """
    threads = usable_cpus()

    def decode_rows(images: np.ndarray, start: int, rows: range) -> list[str]:
        return [_decoded_file(paths[start + row], input_size, digests[start + row], images[row],
                              contents[start + row])[2] for row in rows]

    def submit(pool: ThreadPoolExecutor, start: int) -> tuple[np.ndarray, list[Future]]:
        images = np.empty((min(batch_size, len(paths) - start), *input_size, 3), np.uint8)
        step = -(-len(images) // threads)  # rows per thread
        slices = [range(first, min(first + step, len(images)))
                  for first in range(0, len(images), step)]
        return images, [pool.submit(decode_rows, images, start, rows) for rows in slices]

    starts = range(0, len(paths), batch_size)
    ahead = PREFETCH_BATCHES + 1  # batches in the pool's hands: the one awaited and the next ones
    with ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool:
        pending = collections.deque(submit(pool, start) for start in starts[:ahead])
        try:
            for position, start in enumerate(starts):
                images, slices = pending.popleft()
                if position + ahead < len(starts):
                    pending.append(submit(pool, starts[position + ahead]))
                yield DecodedBatch(start, images, [reason for rows in slices
                                                   for reason in rows.result()])
        finally:
            for _, slices in pending:
                for rows in slices:
                    rows.cancel()


def compute_bottlenecks(
    paths: Sequence[os.PathLike[str] | str],
    extractor: FeatureExtractor | Engine,
    bottleneck_dir: os.PathLike[str] | str,
    batch_size: int = DEFAULT_BATCH_SIZE,
    show_progress: bool = True,
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

    Returns:
        Bottlenecks aligned with `paths`. Unreadable files are skipped with a warning naming them.
    """
    started = time.perf_counter()
    engine = as_engine(extractor)
    spec = engine.spec
    cache = BottleneckCache(as_path(bottleneck_dir), spec)
    vectors = np.zeros((len(paths), spec.vector_size), np.float32)
    ok = np.zeros(len(paths), bool)
    skipped: dict[int, str] = {}
    digests = [""] * len(paths)
    missing = []
    contents: list[Optional[bytes]] = []  # of the missing files, while under KEPT_BYTES in all
    kept = 0
    sharded = load_sharded(os.fspath(cache.directory), spec.vector_size)  # from retrain-extract
    for position, path in enumerate(paths):
        try:
            data = read_bytes(path)
        except OSError as error:
            skipped[position] = f"cannot read file ({error.strerror or error})"
            continue
        digests[position] = content_digest(data)
        vector = sharded.get(digests[position])
        if vector is None:
            vector = cache.load(digests[position])
        if vector is None:
            missing.append(position)
            keep = kept + len(data) <= KEPT_BYTES
            contents.append(data if keep else None)
            kept += len(data) if keep else 0
        else:
            vectors[position], ok[position] = vector, True
    reused = int(ok.sum())
    if missing:
        log.info(
            "Computing bottleneck vectors of %d images with %s (%d cached in %s).",
            len(missing), spec.name, reused, cache.directory,
        )
        missing_paths = [paths[position] for position in missing]
        missing_digests = [digests[position] for position in missing]
        for index, vector, reason in _computed(missing_paths, missing_digests, contents, engine,
                                               cache, batch_size, show_progress):
            if reason:
                skipped[missing[index]] = reason
            else:
                vectors[missing[index]], ok[missing[index]] = vector, True
    for position, reason in sorted(skipped.items()):
        log.warning("Skipping %s: %s", paths[position], reason)
    return Bottlenecks(
        vectors=vectors,
        ok=ok,
        skipped=tuple(sorted(skipped.items())),
        computed=int(ok.sum()) - reused,
        reused=reused,
        seconds=time.perf_counter() - started,
        digests=tuple(digests),
    )


def _computed(
    paths: list,
    digests: list[str],
    contents: list[Optional[bytes]],
    engine: Engine,
    cache: BottleneckCache,
    batch_size: int,
    show_progress: bool,
) -> Iterator[tuple[int, Optional[np.ndarray], str]]:
    """Run the pipeline over `paths` (whose `digests`, and some `contents`, are known), caching
    each batch's vectors.

    Entries are written on a background thread while the extractor works on the next batch; write
    errors surface on the next batch, and pending writes finish even when interrupted.

    Yields:
        (index into `paths`, float32 [D] vector or None, reason it was skipped or "").
    """
    writes: list[Future] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bottleneck-writer") as writer, \
            tqdm(total=len(paths), unit="img", desc="Bottlenecks", dynamic_ncols=True,
                 disable=None if show_progress else True) as progress:
        for batch in decoded_batches(paths, engine.spec.input_size, batch_size, digests,
                                     contents):
            # A batch of only undecodable files (e.g. a rerun) need not even trace the model.
            batch_vectors = None if all(batch.reasons) else engine(batch.images)
            entries = []
            for row, reason in enumerate(batch.reasons):
                index = batch.start + row
                if reason:
                    yield index, None, reason
                else:
                    entries.append((digests[index], batch_vectors[row]))
                    yield index, batch_vectors[row], ""
            for write in [write for write in writes if write.done()]:
                write.result()
                writes.remove(write)
            writes.append(writer.submit(cache.store_all, entries))
            progress.update(len(batch.reasons))
    for write in writes:
        write.result()

