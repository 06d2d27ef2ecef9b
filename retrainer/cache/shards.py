"""Sharded bottleneck storage: runs of TFRecord shards of (sha256, vector), for millions of images.

One `.npy` per image is one object write per image, which object stores throttle (GCS: about
1,000 writes/s per bucket). `retrain-extract` (retrainer/beam) writes runs instead, inside the
extractor's cache namespace (`BottleneckCache.directory`):

    shards/<run id>/vectors-SSSSS-of-NNNNN.tfrecord  tf.train.Example {"sha256": hex bytes,
                                                      "vector": float32 [D] little-endian bytes},
                                                      through Beam's file sink (temp, finalize)
    shards/<run id>/manifest.json                    shard names, counts, unreadable files
    shards/<run id>/_SUCCESS                         written last: a run without it is never read

`retrain` reads finished runs next to the `.npy` entries (`load_sharded`). Entries are keyed by
content hash, so a bundle Beam ran twice, or an image in two runs, is one entry: duplicates are
dropped on read. Paths go through tf.io.gfile, so they may be local or remote (gs://, ram://).

A killed writer leaves a run without its marker: never read, and deleted by the next writer or
reader once it is old and untouched enough that no writer can still be at work on it
(`remove_abandoned_runs`: started, and last changed, more than 3 days ago).
"""

from __future__ import annotations

import bisect
import calendar
import dataclasses
import json
import logging
import time
from typing import Any, Iterator, Optional

import numpy as np
import tensorflow as tf

from retrainer.cache._tfrecord_columns import read_equal_length_records
from retrainer.cache.layout import entry_key, entry_pattern, shards_folder
from retrainer.io.storage import ABANDONED_AFTER_S  # with no file changed for as long, too

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MARKER_NAME = "_SUCCESS"
SHARD_PREFIX = "vectors"
SHARD_SUFFIX = ".tfrecord"
DIGEST_LENGTH = 64  # hex SHA-256
RUN_ID_TIME = "%Y%m%dT%H%M%SZ"  # a run id starts with its start time (UTC), then a random part
MANIFEST_FORMAT = "retrainer-bottleneck-shards-v1"
# Records parsed per tf.io.parse_example call: big enough to amortise the call, small enough to
# keep one batch of 1280-float vectors at ~20 MB.
_PARSE_BATCH = 4096


def encode_record(digest: str, vector: np.ndarray) -> bytes:
    """One shard record: a serialized tf.train.Example {"sha256": hex, "vector": float32 bytes}.

    Raw bytes, not a FloatList: 18x faster to build (measured), parsed by one tf.io.decode_raw,
    and exactly the float32 values computed.
    """
    example = tf.train.Example(features=tf.train.Features(feature={
        "sha256": tf.train.Feature(bytes_list=tf.train.BytesList(value=[digest.encode()])),
        "vector": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[np.asarray(vector, "<f4").tobytes()])),
    }))
    return example.SerializeToString(deterministic=True)  # one layout: the fast reader's


def write_manifest_then_marker(run_dir: str, manifest: dict[str, Any]) -> None:
    """Finish a run: the manifest first, the marker last, so readers never take a partial run."""
    with tf.io.gfile.GFile(tf.io.gfile.join(run_dir, MANIFEST_NAME), "w") as stream:
        stream.write(json.dumps({"format": MANIFEST_FORMAT, **manifest}, indent=1, sort_keys=True))
    with tf.io.gfile.GFile(tf.io.gfile.join(run_dir, MARKER_NAME), "w") as stream:
        stream.write("")


def finished_runs(namespace: str) -> list[str]:
    """Run folders of `namespace` that carry the marker, sorted by name (run ids start with time)."""
    root = shards_folder(namespace)
    if not tf.io.gfile.isdir(root):
        return []
    runs = []
    for name in sorted(tf.io.gfile.listdir(root)):
        run_dir = tf.io.gfile.join(root, name.rstrip("/"))
        if tf.io.gfile.exists(tf.io.gfile.join(run_dir, MARKER_NAME)):
            runs.append(run_dir)
    return runs


def remove_abandoned_runs(namespace: str, max_age_s: float = ABANDONED_AFTER_S) -> list[str]:
    """Delete the unfinished runs of `namespace` that no writer can still be working on.

    A run without its marker is deleted only when both its start (the time its id begins with)
    and the newest modification of any file in it are more than `max_age_s` ago. A live writer
    keeps writing shards into its run, so it is never deleted; a run whose id is not a start time
    (not written by retrain-extract) is never deleted.

    Returns:
        The run folders deleted.
    """
    root = shards_folder(namespace)
    if not tf.io.gfile.isdir(root):
        return []
    oldest_allowed = time.time() - max_age_s
    removed = []
    for name in tf.io.gfile.listdir(root):
        run_dir = tf.io.gfile.join(root, name.rstrip("/"))
        if tf.io.gfile.exists(tf.io.gfile.join(run_dir, MARKER_NAME)):
            continue
        started = _run_start(name.rstrip("/"))
        if started is None or started > oldest_allowed or _newest_change(run_dir) > oldest_allowed:
            continue
        tf.io.gfile.rmtree(run_dir)
        log.info("Deleted the unfinished bottleneck shard run %s (started %s, unchanged for over "
                 "%.0f hours).", run_dir, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
                 max_age_s / 3600)
        removed.append(run_dir)
    return removed


def _run_start(run_id: str) -> Optional[float]:
    """Epoch seconds of a run id's leading "%Y%m%dT%H%M%SZ" (UTC), or None if it has none."""
    try:
        return calendar.timegm(time.strptime(run_id[:16], RUN_ID_TIME))  # 16 = len("20260101T000000Z")
    except ValueError:
        return None


def _newest_change(run_dir: str) -> float:
    """Epoch seconds of the newest file modification under `run_dir` (0 when it has no files)."""
    newest = 0.0
    for folder, _, files in tf.io.gfile.walk(run_dir):
        for name in files:
            newest = max(newest, tf.io.gfile.stat(tf.io.gfile.join(folder, name)).mtime_nsec / 1e9)
    return newest


def read_manifest(run_dir: str) -> dict[str, Any]:
    """The manifest of a finished run (see the module docstring)."""
    with tf.io.gfile.GFile(tf.io.gfile.join(run_dir, MANIFEST_NAME), "r") as stream:
        return json.loads(stream.read())


@dataclasses.dataclass(frozen=True)
class ShardedVectors:
    """Every vector in the finished runs of one namespace, one row per content hash.

    The vectors stay where the shard files were read into (one read-only block per shard, no
    copy); `get` picks the row.

    Attributes:
        rows: {hex sha256: row index over the blocks, in order}.
        blocks: float32 [n_i, D] each.
    """

    rows: dict[str, int]
    blocks: tuple[np.ndarray, ...] = ()
    _starts: list[int] = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", list(np.cumsum([0] + [len(b) for b in self.blocks])))

    def get(self, digest: str) -> Optional[np.ndarray]:
        """float32 [D] (read-only) for `digest`, or None when no finished run has it."""
        row = self.rows.get(digest)
        if row is None:
            return None
        block = bisect.bisect_right(self._starts, row) - 1
        return self.blocks[block][row - self._starts[block]]

    def __len__(self) -> int:
        return len(self.rows)


def load_sharded(namespace: str, vector_size: int) -> ShardedVectors:
    """Read the finished runs of `namespace`; duplicates dropped, the first usable row kept.

    A run that cannot be read, or holds vectors of another size, is left out with a warning, and
    so are non-finite vectors (their images are then computed again). Unfinished runs old enough
    to be abandoned are deleted first (`remove_abandoned_runs`).

    Args:
        namespace: the cache folder of one extractor (`BottleneckCache.directory`).
        vector_size: D.

    Returns:
        ShardedVectors (empty when there are no finished runs).
    """
    remove_abandoned_runs(namespace)
    keys: list[np.ndarray] = []
    blocks: list[np.ndarray] = []
    for run_dir in finished_runs(namespace):
        try:
            run = _read_run(run_dir, vector_size)
        except (OSError, ValueError, KeyError, tf.errors.OpError) as error:
            log.warning("Bottleneck shard run %s is unreadable (%s); its vectors are recomputed.",
                        run_dir, str(error).splitlines()[0] if str(error) else type(error).__name__)
            continue
        finite = [np.isfinite(vectors).all(axis=1) for _, vectors in run]
        bad = sum(int((~ok).sum()) for ok in finite)
        if bad:
            log.warning("Bottleneck shard run %s has %d non-finite vectors; they are recomputed.",
                        run_dir, bad)
        for (digests, vectors), ok in zip(run, finite):
            keys.append(np.where(ok, digests, b""))  # "" never matches a digest
            blocks.append(vectors)
    if not blocks:
        return ShardedVectors({})
    # Built back to front, so the first row of a hash (first run, first shard) is the one kept.
    digests = np.concatenate(keys).astype(str).tolist()
    rows = dict(zip(reversed(digests), range(len(digests) - 1, -1, -1)))
    rows.pop("", None)
    return ShardedVectors(rows, tuple(blocks))


def _read_run(run_dir: str, vector_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(hex digests bytes [n], vectors float32 [n, D]) of each shard a finished run lists."""
    manifest = read_manifest(run_dir)
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"unknown format {manifest.get('format')!r}")
    if manifest.get("vector_size") != vector_size:
        raise ValueError(f"vectors of size {manifest.get('vector_size')}, not {vector_size}")
    return [_read_shard(path, vector_size) for path in _shard_files(run_dir, manifest)]


def _read_shard(path: str, vector_size: int) -> tuple[np.ndarray, np.ndarray]:
    """One shard's columns: sliced out of the file read whole when every record has
    `encode_record`'s layout (the fast path), else parsed record by record with tf.data."""
    read = read_equal_length_records(path)
    columns = None if read is None else _fixed_layout_columns(read[1], vector_size)
    if columns is not None:
        return columns
    digests, blocks = [np.zeros(0, "S64")], [np.zeros((0, vector_size), np.float32)]
    for batch in _parsed_batches([path], {"sha256": tf.io.FixedLenFeature([], tf.string),
                                          "vector": tf.io.FixedLenFeature([], tf.string)}):
        digests.append(batch["sha256"].astype("S64"))
        blocks.append(batch["vector"])
    vectors = np.concatenate(blocks)
    if vectors.shape[1:] != (vector_size,):  # decode_raw gave another row length
        raise ValueError(f"records of {vectors.shape[1:]} floats, not {vector_size}")
    return np.concatenate(digests), vectors


def _fixed_layout_columns(records: np.ndarray, vector_size: int
                          ) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(digests S64 [n], float32 [n, D] view) when every record of uint8 [n, L] `records` has the
    first one's bytes outside the digest and the vector; None otherwise."""
    if not len(records):
        return np.zeros(0, "S64"), np.zeros((0, vector_size), np.float32)
    first = bytes(records[0])
    feature = tf.train.Example.FromString(first).features.feature
    digest = feature["sha256"].bytes_list.value[0]
    vector = feature["vector"].bytes_list.value[0]
    if len(digest) != DIGEST_LENGTH or len(vector) != 4 * vector_size:
        return None
    vector_at, digest_at = first.index(vector), first.index(digest)
    if vector_at < digest_at + len(digest) and digest_at < vector_at + len(vector):
        return None  # the hash's text also occurs inside the vector's bytes: no fixed layout
    framing = np.ones(records.shape[1], bool)
    framing[digest_at:digest_at + len(digest)] = False
    framing[vector_at:vector_at + len(vector)] = False
    if not (records[:, framing] == records[0, framing]).all():
        return None
    digests = np.ascontiguousarray(records[:, digest_at:digest_at + len(digest)]).view("S64")[:, 0]
    return digests, records[:, vector_at:vector_at + len(vector)].view("<f4")


def cached_digests(namespace: str) -> set[str]:
    """Content hashes already cached in `namespace`: in finished shard runs or as `.npy` entries.

    Reads the shards (their hash column is kept) and the `.npy` names, never a `.npy` file.
    """
    found: set[str] = set()
    for run_dir in finished_runs(namespace):
        try:
            manifest = read_manifest(run_dir)
            for digests, _ in _read_run(run_dir, manifest["vector_size"]):
                found.update(digests.astype(str).tolist())
        except (OSError, ValueError, KeyError, tf.errors.OpError):
            continue  # load_sharded warns about it; here its images just count as missing
    for path in tf.io.gfile.glob(entry_pattern(namespace)):
        found.add(entry_key(path))
    return found


def _shard_files(run_dir: str, manifest: dict[str, Any]) -> list[str]:
    """The shards a run's manifest lists (never a temp file the sink left behind)."""
    return [tf.io.gfile.join(run_dir, name) for name in manifest["shards"]]


def _parsed_batches(files: list[str], features: dict[str, Any]) -> Iterator[dict[str, np.ndarray]]:
    """Yield {feature name: numpy array} for batches of up to _PARSE_BATCH records of `files`."""
    if not files:
        return
    def parse(records: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = tf.io.parse_example(records, features)
        if "vector" in parsed:  # float32 [B, D] (decode_raw fails on rows of unequal length)
            parsed["vector"] = tf.io.decode_raw(parsed["vector"], tf.float32, little_endian=True)
        return parsed

    dataset = (
        tf.data.TFRecordDataset(files, num_parallel_reads=min(len(files), 8))
        .batch(_PARSE_BATCH)
        .map(parse, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(2)
    )
    yield from dataset.as_numpy_iterator()
