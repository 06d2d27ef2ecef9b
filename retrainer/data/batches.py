"""Decoding many image files: each file's pixels and content hash, several files at a time.

Three readers of one decoder (`retrainer.data.decoding.decode_image`), so every stage sees exactly
the pixels training saw: `decoded_batches` (a thread pool working a few batches ahead: the
bottleneck stage), `decoded_images` (a tf.data pipeline: fine-tuning and distorted vectors) and
`decode_files` (all at once, on the same thread pool: int8 calibration, the export report, the
mirror images of test-time augmentation). A file that cannot be read or decoded comes out black,
with the reason, and never stops the others.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

import numpy as np

from retrainer.data.decoding import UnreadableImageError, decode_image
from retrainer.data.signatures import DECODE_SIZE, Signatures, signature_of_pixels
from retrainer.io.host import usable_cpus
from retrainer.io.storage import read_bytes

if TYPE_CHECKING:
    import tensorflow as tf

# Fixed decode parallelism and read-ahead, with tf.data autotuning off: its background thread made
# iterator teardown stall for 1-2 s at random (measured with benchmarks/bench_pipeline.py), and
# decoding on every core, two batches ahead, already keeps the extractor busy.
PREFETCH_BATCHES = 2
DECODE_BATCH = 32  # images per batch of `decode_files`


def content_digest(data: bytes) -> str:
    """Hex SHA-256 of an image file's bytes (the cache key)."""
    return hashlib.sha256(data).hexdigest()


def file_digest(path: os.PathLike[str] | str) -> str:
    """Hex SHA-256 of a file's bytes (the cache key)."""
    return content_digest(read_bytes(path))


def _decoded_file(
    path: os.PathLike[str] | str, input_size: tuple[int, int], digest: str = "",
    out: Optional[np.ndarray] = None, data: Optional[bytes] = None,
    thumbnail: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, str, str]:
    """(uint8 [H, W, 3] pixels, digest, reason): black pixels and a reason if undecodable.

    The digest is computed from the bytes decoded unless the caller already knows it, and the
    file is read unless its bytes are given. With `out`, the pixels are written into it (black if
    undecodable); with `thumbnail`, a smaller copy too (`decode_image`).
    """
    try:
        data = read_bytes(path) if data is None else data
        pixels = decode_image(data, input_size, path, out, thumbnail)
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
    import tensorflow as tf  # only fine-tuning and distorted vectors use tf.data

    height, width = input_size

    def load(encoded_path: bytes) -> tuple[np.ndarray, bytes, bytes]:
        pixels, digest, reason = _decoded_file(os.fsdecode(encoded_path), input_size)
        return pixels, digest.encode(), reason.encode()

    def load_one(position: tf.Tensor, path: tf.Tensor) -> tuple[tf.Tensor, ...]:
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
    signatures: Optional[Signatures] = None  # when asked for; empty where undecodable


def decoded_batches(
    paths: Sequence[os.PathLike[str] | str], input_size: tuple[int, int], batch_size: int,
    digests: Sequence[str], contents: Sequence[Optional[bytes]], signatures: bool = False,
) -> Iterator[DecodedBatch]:
    """Decode `paths` in order, in batches, on a thread pool: `PREFETCH_BATCHES` batches ahead.

    The bottleneck stage's decoder. Plain threads (Pillow releases the GIL) and numpy batches:
    with tf.data's map and `numpy_function` each image cost twice the CPU of its decode (0.83 vs
    0.37 ms for a Fashion-MNIST PNG, benchmarks/bench_pipeline.py), which the engine lost on 2
    cores.
    Each thread decodes a slice of a batch straight into the batch's rows (one task per thread
    and batch, not per image), so the consumer's thread (the engine's) only waits. The files'
    digests are known (the cache lookup computed them): not hashed again; nor read again where
    `contents` has their bytes (None where it does not). With `signatures`, each image's audit
    signature is made from the same decode (`retrainer.data.signatures`).
    """
    threads = usable_cpus()

    def decode_rows(images: np.ndarray, made: Optional[Signatures], start: int,
                    rows: range) -> list[str]:
        reasons = []
        thumbnail = np.zeros((*DECODE_SIZE, 3), np.uint8) if made is not None else None
        for row in rows:
            reasons.append(_decoded_file(paths[start + row], input_size, digests[start + row],
                                         images[row], contents[start + row], thumbnail)[2])
            if made is not None and thumbnail is not None and not reasons[-1]:
                made.thumbnails[row], made.hashes[row] = signature_of_pixels(thumbnail)
        return reasons

    def submit(pool: ThreadPoolExecutor, start: int) -> tuple[
            np.ndarray, Optional[Signatures], list[Future[list[str]]]]:
        images = np.empty((min(batch_size, len(paths) - start), *input_size, 3), np.uint8)
        made = Signatures.empty(len(images)) if signatures else None
        step = -(-len(images) // threads)  # rows per thread
        slices = [range(first, min(first + step, len(images)))
                  for first in range(0, len(images), step)]
        return images, made, [pool.submit(decode_rows, images, made, start, rows)
                              for rows in slices]

    starts = range(0, len(paths), batch_size)
    ahead = PREFETCH_BATCHES + 1  # batches in the pool's hands: the one awaited and the next ones
    with ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool:
        pending = collections.deque(submit(pool, start) for start in starts[:ahead])
        try:
            for position, start in enumerate(starts):
                images, made, slices = pending.popleft()
                if position + ahead < len(starts):
                    pending.append(submit(pool, starts[position + ahead]))
                yield DecodedBatch(start, images, [reason for rows in slices
                                                   for reason in rows.result()], made)
        finally:
            for _, _, slices in pending:
                for rows in slices:
                    rows.cancel()


def decode_files(
    paths: Sequence[os.PathLike[str] | str], input_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Decode `paths` at `input_size`, in order.

    Returns:
        (uint8 [N, H, W, 3] pixels, bool [N] decoded); rows of undecodable files are black.
    """
    pixels = np.zeros((len(paths), *input_size, 3), np.uint8)
    ok = np.zeros(len(paths), bool)
    # The bottleneck stage's thread pool, not tf.data: no AutoGraph trace of a map function
    # (0.1-0.2 s per call, more than decoding a few hundred small images). Digests unused.
    for batch in decoded_batches(paths, input_size, DECODE_BATCH, ["-"] * len(paths),
                                 [None] * len(paths)):
        rows = slice(batch.start, batch.start + len(batch.images))
        pixels[rows] = batch.images
        ok[rows] = [not reason for reason in batch.reasons]
    return pixels, ok


def decode_signatures(paths: Sequence[os.PathLike[str] | str]) -> Signatures:
    """The audit's signatures of `paths`, each file decoded for them alone (at the signatures'
    own size): for callers whose bottleneck stage did not make them. Empty where undecodable."""
    made = Signatures.empty(len(paths))
    for batch in decoded_batches(paths, DECODE_SIZE, DECODE_BATCH, [""] * len(paths),
                                 [None] * len(paths), signatures=True):
        assert batch.signatures is not None
        rows = slice(batch.start, batch.start + len(batch.reasons))
        made.thumbnails[rows] = batch.signatures.thumbnails
        made.hashes[rows] = batch.signatures.hashes
    return made
