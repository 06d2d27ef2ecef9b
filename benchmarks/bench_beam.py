"""Benchmark `retrain-extract` on Beam against the single-machine path, all in one run:

(a) bottleneck extraction of the same N real Fashion-MNIST images with efficientnet_lite0, each a
    real process into an empty cache: `retrain`'s path (compute_bottlenecks) vs `retrain-extract
    --runner FnApiRunner --direct_running_mode multi_processing --direct_num_workers 2`. Reported:
    wall time with start-up, steady images/s (from a second, small run of each: (N - n) images
    over the difference in wall time, so start-up, model load and tracing cancel out) and peak
    memory (VmHWM) of the launcher and of each Beam worker process;
(b) loading K cached vectors of 1280 floats, one `.npy` per image (`BottleneckCache.load`, as
    `retrain` does) vs one shard run read record by record with tf.data (the previous reader)
    vs the same run read by `shards.load_sharded` (whole files, columns sliced out), all just
    written (warm page cache); load and lookup timed apart, image hashing left out.

The machine may be shared: the figures to keep are the ratios, measured in the same run.

    python -m benchmarks.bench_beam [--images 1000] [--small 100] [--vectors 100000] [--smoke]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks import cli
from benchmarks.data import fashion_mnist_folder
from benchmarks.timing import ENV, machine_line

SINGLE_MACHINE = (
    "import sys; from retrainer.cache.bottlenecks import compute_bottlenecks; "
    "from retrainer.data.discovery import discover_images; "
    "from retrainer.extractors import create_extractor; "
    "paths = [image.path for image in discover_images(sys.argv[1]).images]; "
    "result = compute_bottlenecks(paths, create_extractor('efficientnet_lite0'), sys.argv[2], "
    "show_progress=False); assert result.computed == len(paths), result"
)
BEAM_ARGS = ["--runner", "FnApiRunner", "--direct_running_mode", "multi_processing",
             "--direct_num_workers", "2"]


def command(mode: str, images: Path, cache: Path) -> list[str]:
    if mode == "single machine":
        return [sys.executable, "-c", SINGLE_MACHINE, str(images), str(cache)]
    return [sys.executable, "-m", "retrainer.cli.extract", "--image_dir", str(images),
            "--bottleneck_dir", str(cache), "--quiet", *BEAM_ARGS]


def peak_memory_mib(pid: int) -> float:
    """VmHWM (peak resident set) of a live process, MiB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def descendants(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            pending += children
    return found


def timed_run(argv: list[str]) -> tuple[float, float, list[float]]:
    """(wall seconds, launcher peak MiB, [peak MiB of each descendant process])."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peaks: dict[int, float] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for pid in [process.pid, *descendants(process.pid)]:
                peaks[pid] = max(peaks.get(pid, 0.0), peak_memory_mib(pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = process.communicate()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    if process.returncode != 0:
        sys.exit(f"{' '.join(argv[:4])} failed:\n{stderr.decode()[-3000:]}")
    launcher = peaks.pop(process.pid, 0.0)
    # Python worker processes only (the sampler also sees short-lived helpers, e.g. `uname`).
    return seconds, launcher, sorted((peak for peak in peaks.values() if peak > 100), reverse=True)


def bench_extraction(work: Path, images: int, small: int) -> None:
    full = fashion_mnist_folder(work / "full", images // 10)
    few = fashion_mnist_folder(work / "few", small // 10)
    rows = {}
    for mode in ("single machine", "Beam FnApiRunner, 2 worker processes"):
        wall, launcher, workers = timed_run(command(mode, full, work / f"cache-{len(rows)}-full"))
        wall_small, _, _ = timed_run(command(mode, few, work / f"cache-{len(rows)}-small"))
        steady = (images - small) / max(wall - wall_small, 1e-9)
        rows[mode] = (wall, steady, launcher, workers)
    print(f"\n(a) extraction, efficientnet_lite0, {images} Fashion-MNIST PNGs (steady rate from a "
          f"{small}-image run of each)")
    print(f"{'mode':<38} {'wall s':>7} {'steady img/s':>13} {'launcher MiB':>13}  worker MiB")
    base_wall, base_steady = rows["single machine"][:2]
    for mode, (wall, steady, launcher, workers) in rows.items():
        print(f"{mode:<38} {wall:>7.1f} {steady:>13.1f} {launcher:>13.0f}  "
              + (", ".join(f"{peak:.0f}" for peak in workers) or "-"))
    wall, steady = rows["Beam FnApiRunner, 2 worker processes"][:2]
    print(f"Beam / single machine: wall x{wall / base_wall:.2f}, steady x{steady / base_steady:.2f}")


def bench_loading(work: Path, count: int, size: int = 1280) -> None:
    import tensorflow as tf

    from retrainer.cache.entries import BottleneckCache
    from retrainer.cache.shards import encode_record, load_sharded, write_manifest_then_marker
    from retrainer.extractors import ExtractorSpec

    rng = np.random.default_rng(0)
    digests = [f"{value:064x}" for value in rng.choice(2**62, count, replace=False)]
    vectors = rng.normal(size=(count, size)).astype(np.float32)
    spec = ExtractorSpec("bench", "bench-v1", (224, 224), size)
    npy = BottleneckCache(work / "npy", spec)
    for digest, vector in zip(digests, vectors):
        npy.store(digest, vector)
    namespace = os.fspath(BottleneckCache(work / "shards", spec).directory)
    run_dir = os.path.join(namespace, "shards", "run")
    os.makedirs(run_dir)
    names = [f"vectors-{index:05d}-of-00008.tfrecord" for index in range(8)]
    for index, name in enumerate(names):
        with tf.io.TFRecordWriter(os.path.join(run_dir, name)) as writer:
            for row in range(index, count, len(names)):
                writer.write(encode_record(digests[row], vectors[row]))
    write_manifest_then_marker(run_dir, {"vector_size": size, "shards": names, "vectors": count,
                                         "already_cached": 0, "unreadable": []})

    def gather(get) -> tuple[np.ndarray, float]:
        """compute_bottlenecks' lookup: one get per image into a [K, D] array (no hashing)."""
        started = time.perf_counter()
        gathered = np.zeros((count, size), np.float32)
        for row, digest in enumerate(digests):
            gathered[row] = get(digest)
        return gathered, time.perf_counter() - started

    timings = {}
    from_npy, lookup = gather(npy.load)  # the .npy reader loads as it looks up
    timings[".npy per image (BottleneckCache)"] = (0.0, lookup)
    started = time.perf_counter()
    previous = previous_reader([os.path.join(run_dir, name) for name in names])
    load = time.perf_counter() - started
    from_previous, lookup = gather(previous)
    timings["shards, tf.data record by record"] = (load, lookup)
    started = time.perf_counter()
    sharded = load_sharded(namespace, size)
    load = time.perf_counter() - started
    from_shards, lookup = gather(sharded.get)
    timings["shards, whole files (load_sharded)"] = (load, lookup)
    for gathered in (from_npy, from_previous, from_shards):
        assert np.array_equal(gathered, vectors)
    npy_mib = sum(path.stat().st_size for path in (work / "npy").rglob("*.npy")) / 2**20
    shard_mib = sum(os.path.getsize(os.path.join(run_dir, name)) for name in names) / 2**20
    print(f"\n(b) loading {count} vectors of {size} floats (warm page cache; no image hashing): "
          f"load = reading the store, lookup = one get per image into a [{count}, {size}] array")
    print(f"{'storage':<36} {'load s':>7} {'lookup s':>9} {'total s':>8} {'vectors/s':>10} "
          f"{'MiB':>5} {'files':>7}")
    for storage, (load, lookup) in timings.items():
        mib, files = (npy_mib, count) if storage.startswith(".npy") else (shard_mib, len(names) + 2)
        print(f"{storage:<36} {load:>7.2f} {lookup:>9.2f} {load + lookup:>8.2f} "
              f"{count / (load + lookup):>10.0f} {mib:>5.0f} {files:>7}")
    base = sum(timings[".npy per image (BottleneckCache)"])
    for storage, parts in list(timings.items())[1:]:
        print(f"{storage} vs .npy: x{base / sum(parts):.1f} faster")


def previous_reader(files: list[str]) -> Callable[[str], np.ndarray]:
    """The reader load_sharded used before whole-file reads: tf.data, parse_example and
    decode_raw in batches of 4,096, one Python string per record, a dict of digests."""
    import tensorflow as tf

    from retrainer.cache.shards import _parsed_batches

    features = {name: tf.io.FixedLenFeature([], tf.string) for name in ("sha256", "vector")}
    digests, blocks = [], []
    for batch in _parsed_batches(files, features):
        digests += [digest.decode() for digest in batch["sha256"]]
        blocks.append(batch["vector"])
    vectors = np.concatenate(blocks)
    rows = {digest: row for row, digest in reversed(list(enumerate(digests)))}
    return lambda digest: vectors[rows[digest]]


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--skip_extraction", action="store_true")
    args = cli.parse(parser, {"images": 20, "small": 10, "vectors": 1000})
    print(f"{machine_line()} at start")
    with tempfile.TemporaryDirectory(prefix="bench_beam_") as work:
        if not args.skip_extraction:
            bench_extraction(Path(work), args.images, args.small)
        bench_loading(Path(work), args.vectors)


if __name__ == "__main__":
    main()
