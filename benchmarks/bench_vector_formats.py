"""Benchmark the bottleneck cache's two on-disk vector formats: write, read all, read a subset.

N random float32 vectors of D dimensions (EfficientNet-Lite0's 1280 by default; the format's cost
does not depend on the values), each format written and read through retrainer's own code:
- `npy per entry`: one .npy file per image (`BottleneckCache.store`, as a remote cache writes);
- `packs of 32`: the stage's local format (`BottleneckCache.store_all`: 32 vectors in one file,
  hard-linked under each entry's name, read back as .npy-compatible entries);
- `shard run`: retrain-extract's format (one TFRecord shard of (digest, vector) records plus its
  manifest and marker, read by `cache.shards.load_sharded`);
- the same on `ram://` (fsspec's in-memory file system, standing in for an object store).
`read subset` is a later run that needs only --subset of the N vectors: entries are opened one by
one, a shard run is read whole. Prints seconds (wall and CPU of this process), file count and
bytes on disk (each inode once); the baseline is `npy per entry` in the same run.
docs/architecture.md ("Two vector formats") explains the choice these figures support.

    python -m benchmarks.bench_vector_formats [--count 20000] [--size 1280] [--subset 1000] [--smoke]
"""

from __future__ import annotations

import hashlib
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks import cli
from benchmarks.timing import machine_line

RUN_ID = "20260101T000000Z-bench"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(work: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds, result) of work()."""
    wall, used = time.perf_counter(), cpu_seconds()
    result = work()
    return time.perf_counter() - wall, cpu_seconds() - used, result


def on_disk(folder: Path) -> tuple[int, int]:
    """(file names, bytes on disk counting each inode once) under folder."""
    seen, names, size = set(), 0, 0
    for parent, _, files in os.walk(folder):
        for name in files:
            info = os.stat(os.path.join(parent, name))
            names += 1
            if info.st_ino not in seen:
                seen.add(info.st_ino)
                size += info.st_blocks * 512
    return names, size


def write_shard_run(folder: str, digests: list[str], vectors: np.ndarray) -> None:
    """One finished shard run as retrain-extract leaves it: one shard, manifest, then marker."""
    import tensorflow as tf

    from retrainer.cache.layout import shards_folder
    from retrainer.cache.shards import encode_record, write_manifest_then_marker

    run_dir = f"{shards_folder(folder)}/{RUN_ID}"
    tf.io.gfile.makedirs(run_dir)
    name = "vectors-00000-of-00001.tfrecord"
    with tf.io.TFRecordWriter(f"{run_dir}/{name}") as writer:
        for digest, vector in zip(digests, vectors):
            writer.write(encode_record(digest, vector))
    write_manifest_then_marker(run_dir, {
        "extractor_id": "bench-v1", "extractor": "bench", "input_size": [224, 224],
        "vector_size": int(vectors.shape[1]), "shards": [name], "vectors": len(digests),
        "already_cached": 0, "unreadable": [],
    })


def measure(root: str, count: int, size: int, subset: int) -> list[tuple[Any, ...]]:
    """Rows (format, write s, write CPU s, read s, read CPU s, files, bytes; 0 when unknown)."""
    from retrainer.cache.entries import BottleneckCache
    from retrainer.cache.shards import load_sharded
    from retrainer.extractors import ExtractorSpec
    from retrainer.io.storage import as_path, is_url

    spec = ExtractorSpec("bench", "bench-v1", (224, 224), size)
    vectors = np.random.default_rng(0).standard_normal((count, size)).astype(np.float32)
    digests = [hashlib.sha256(str(index).encode()).hexdigest() for index in range(count)]
    part = digests[:subset]
    rows: list[tuple[Any, ...]] = []

    def entries(name: str, where: str, batch: int) -> None:
        cache = BottleneckCache(as_path(where), spec)

        def write() -> None:
            for start in range(0, count, batch):
                chunk = list(zip(digests[start:start + batch], vectors[start:start + batch]))
                if batch > 1:
                    cache.store_all(chunk)
                else:
                    cache.store(*chunk[0])

        wall_w, cpu_w, _ = timed(write)
        fresh = BottleneckCache(cache.root, spec)  # a later run: packs are parsed again
        wall_r, cpu_r, read = timed(lambda: [fresh.load(digest) for digest in digests])
        assert all(np.array_equal(a, b) for a, b in zip(read, vectors)), name
        fresh = BottleneckCache(cache.root, spec)
        wall_s, cpu_s, _ = timed(lambda: [fresh.load(digest) for digest in part])
        files, used = (0, 0) if is_url(cache.directory) else on_disk(Path(cache.directory))
        rows.append((name, wall_w, cpu_w, wall_r, cpu_r, files or count, used))
        rows.append((f"  read subset of {len(part)}", 0.0, 0.0, wall_s, cpu_s, 0, 0))

    def shards(name: str, where: str) -> None:
        folder = os.fspath(BottleneckCache(as_path(where), spec).directory)
        wall_w, cpu_w, _ = timed(lambda: write_shard_run(folder, digests, vectors))
        wall_r, cpu_r, run = timed(lambda: load_sharded(folder, size))
        assert all(np.array_equal(run.get(d), v) for d, v in zip(digests, vectors)), name
        wall_s, cpu_s, _ = timed(lambda: [load_sharded(folder, size).get(d) for d in part[:1]])
        files, used = (3, 0) if is_url(folder) else on_disk(Path(folder))
        rows.append((name, wall_w, cpu_w, wall_r, cpu_r, files, used))
        rows.append((f"  read subset of {len(part)}", 0.0, 0.0, wall_s, cpu_s, 0, 0))

    entries("npy per entry", f"{root}/npy", 1)
    entries("packs of 32", f"{root}/packs", 32)
    shards("shard run", f"{root}/shards")
    ram = f"ram://bench-vector-formats-{os.getpid()}"
    entries("ram://: npy per entry (no links there)", f"{ram}/npy", 32)
    shards("ram://: shard run", f"{ram}/shards")
    return rows


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--count", type=int, default=20000, help="vectors written (N)")
    parser.add_argument("--size", type=int, default=1280, help="floats per vector (D)")
    parser.add_argument("--subset", type=int, default=1000, help="vectors a later run reads")
    args = cli.parse(parser, {"count": 96, "size": 16, "subset": 10})
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as scratch:
        rows = measure(scratch, args.count, max(args.size, 1), min(args.subset, args.count))
    print(machine_line())
    print(f"{args.count} vectors of {args.size} float32")
    print(f"{'format':44s} {'write s':>8s} {'CPU s':>7s} {'read s':>7s} {'CPU s':>7s} "
          f"{'files':>6s} {'MB':>7s}")
    for name, wall_w, cpu_w, wall_r, cpu_r, files, used in rows:
        if name.startswith(" "):  # a later run's read: nothing written
            print(f"{name:44s} {'':8s} {'':7s} {wall_r:7.3f} {cpu_r:7.3f}")
        else:
            print(f"{name:44s} {wall_w:8.3f} {cpu_w:7.3f} {wall_r:7.3f} {cpu_r:7.3f} {files:6d} "
                  f"{used / 1e6:7.1f}")


if __name__ == "__main__":
    main()
