"""Benchmark `retrain-extract` on Beam's runners against the single-machine stage, in one run:

(a) bottleneck extraction of a small and a large set of real images (1,000 and 10,000 by default;
    480x360 JPEG photos made from Debian's photographs, or Fashion-MNIST with --data
    fashion_mnist), efficientnet_lite0 at the default precision, each mode a real process into
    an empty cache: `retrain`'s bottleneck stage (compute_bottlenecks with the default engine);
    `retrain-extract` on the FnApiRunner with 2 worker processes; on the PortableRunner through
    Beam's local job service in LOOPBACK mode (the SDK harness in the launcher); on the
    DaskRunner through a local cluster (a scheduler and 1, then 2 worker processes, `--nthreads
    1`), started and warmed up (one tiny extraction: the workers import TensorFlow) before timing.
    Reported: each set's wall time, start-up included; the steady rate, (large - small) images
    over the difference in wall time, so start-up, model loading and tracing cancel out, and its
    ratio to the single-machine stage's; peak memory (VmHWM) of the launcher and of each worker
    process; the load average.
    A long measurement can be taken in chunks, one mode per run (`--modes dask1 --work DIR
    --results FILE`): each run adds its rows to FILE and prints every row so far;
(b) loading K cached vectors of 1280 floats, one `.npy` per image (`BottleneckCache.load`, as
    `retrain` does) vs one shard run read record by record with tf.data (the previous reader)
    vs the same run read by `shards.load_sharded` (whole files, columns sliced out), all just
    written (warm page cache); load and lookup timed apart, image hashing left out.

The machine may be shared: the figures to keep are the ratios, measured in the same run.

    python -m benchmarks.bench_beam [--small 1000] [--large 10000] [--vectors 100000] [--smoke]
    python -m benchmarks.bench_beam --modes single --work W --results W/rows.json --skip_loading
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from benchmarks import cli
from benchmarks.data import fashion_mnist_folder
from benchmarks.photos import SMALL, photo_set
from benchmarks.timing import ENV, machine_line

SINGLE_MACHINE = (
    "import sys; from retrainer.cache.bottlenecks import compute_bottlenecks; "
    "from retrainer.data.discovery import discover_images; "
    "from retrainer.engines.factory import create_engine; "
    "from retrainer.extractors import create_extractor; "
    "paths = [image.path for image in discover_images(sys.argv[1]).images]; "
    "engine = create_engine(create_extractor('efficientnet_lite0'), 'auto'); "
    "result = compute_bottlenecks(paths, engine, sys.argv[2], show_progress=False); "
    "assert result.computed == len(paths), result"
)
FNAPI_2 = ["--runner", "FnApiRunner", "--direct_running_mode", "multi_processing",
           "--direct_num_workers", "2"]


def extract_command(images: Path, cache: Path, beam_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "retrainer.cli.extract", "--image_dir", str(images),
            "--bottleneck_dir", str(cache), "--quiet", *beam_args]


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


def dask_worker_peaks_mib(client: Any) -> list[float]:
    """VmHWM of each Dask worker process, MiB (read inside the workers)."""

    def peak() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    return sorted(client.run(peak).values(), reverse=True)


MODES = {
    "single": "single machine (retrain's stage)",
    "fnapi2": "Beam FnApiRunner, 2 processes",
    "portable": "Beam PortableRunner, LOOPBACK",
    "dask1": "Beam DaskRunner, 1 worker",
    "dask2": "Beam DaskRunner, 2 workers",
}


def measure(name: str, sets: dict[int, Path], work: Path, beam_args: Optional[list[str]],
            client: Any = None) -> dict[str, Any]:
    """Wall time of each set (small first) into an empty cache in one mode, the steady rate,
    the peaks, and the load average once the large set is done."""
    walls, launcher, workers = {}, 0.0, []
    for count, images in sets.items():
        cache = work / f"cache-{name}-{count}"
        shutil.rmtree(cache, ignore_errors=True)
        command = ([sys.executable, "-c", SINGLE_MACHINE, str(images), str(cache)]
                   if beam_args is None else extract_command(images, cache, beam_args))
        walls[count], run_launcher, run_workers = timed_run(command)
        shutil.rmtree(cache, ignore_errors=True)
        launcher = max(launcher, run_launcher)
        # The large set runs last: its workers' peaks (a Dask worker's covers every run).
        workers = dask_worker_peaks_mib(client) if client is not None else run_workers
    (small, small_wall), (large, large_wall) = sorted(walls.items())
    steady = (large - small) / (large_wall - small_wall) if large_wall > small_wall else None
    return {"walls": {str(count): wall for count, wall in walls.items()}, "steady": steady,
            "launcher": launcher, "workers": workers, "load": os.getloadavg()[0],
            "finished": time.strftime("%Y-%m-%d %H:%M")}


def measure_dask(workers: int, sets: dict[int, Path], work: Path, warm_up: Path) -> dict[str, Any]:
    """Start a local cluster (its scheduler in this process, `workers` worker processes), warm it
    up, measure through it, stop it."""
    from distributed import Client, LocalCluster

    started = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        beam_args = ["--runner", "DaskRunner", "--dask_client_address", cluster.scheduler_address]
        timed_run(extract_command(warm_up, work / f"warm-{workers}", beam_args))
        shutil.rmtree(work / f"warm-{workers}", ignore_errors=True)
        start_up = time.perf_counter() - started
        row = measure(f"dask{workers}", sets, work, beam_args, client)
    return {**row, "start-up": start_up}


def measure_portable(sets: dict[int, Path], work: Path) -> dict[str, Any]:
    """Start Beam's local job service on a free port, measure through it, stop it."""
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    service = subprocess.Popen(
        [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
         "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("localhost", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or service.poll() is not None:
                    sys.exit("Beam's local job service did not start")
                time.sleep(0.2)
        return measure("portable", sets, work, ["--runner", "PortableRunner", "--job_endpoint",
                                                f"localhost:{port}", "--environment_type",
                                                "LOOPBACK"])
    finally:
        service.terminate()
        service.wait(timeout=30)


def image_sets(work: Path, data: str, counts: tuple[int, ...]) -> dict[int, Path]:
    """count -> a folder of that many real images (built once in `work`, reused by later runs)."""
    if data == "photos":  # 480x360 JPEGs from Debian's photographs, 12 classes
        for count in counts:
            photo_set(work / f"photos-{count}", count, SMALL)
        return {count: (work / f"photos-{count}").resolve() for count in counts}
    return {count: fashion_mnist_folder(work / f"images-{count}", count // 10) for count in counts}


def bench_extraction(work: Path, data: str, small: int, large: int, modes: list[str],
                     results: Optional[Path]) -> None:
    """Measure `modes`; print them with the rows an earlier run left in `results` (chunks of
    one measurement, each under the CPU lock), ratios against the single-machine row."""
    sets = image_sets(work, data, (small, large))
    warm_up = fashion_mnist_folder(work / "warm-up", 2)
    rows = json.loads(results.read_text()) if results and results.is_file() else {}
    for mode in modes:
        if mode == "single":
            rows[mode] = measure(mode, sets, work, None)
        elif mode == "fnapi2":
            rows[mode] = measure(mode, sets, work, FNAPI_2)
        elif mode == "portable":
            rows[mode] = measure_portable(sets, work)
        else:
            rows[mode] = measure_dask(int(mode.removeprefix("dask")), sets, work, warm_up)
        if results:
            results.write_text(json.dumps(rows, indent=1) + "\n")
    what = "480x360 JPEG photos" if data == "photos" else "Fashion-MNIST PNGs (28x28 grey)"
    print(f"\n(a) extraction, efficientnet_lite0 at the default precision, {what}; steady rate "
          f"from the {small:,}- and {large:,}-image runs of each mode")
    print(f"{'mode':<34} {f'{small:,}: s':>9} {f'{large:,}: s':>10} {'steady img/s':>13} "
          f"{'x single':>9} {'launcher MiB':>13} {'load':>5}  worker MiB")
    base = rows.get("single", {}).get("steady")
    for mode in [mode for mode in MODES if mode in rows]:
        row = rows[mode]
        peaks = ", ".join(f"{peak:.0f}" for peak in row["workers"]) or "-"
        steady = f"{row['steady']:.1f}" if row["steady"] else "n/a"  # tiny sets: noise
        ratio = f"{row['steady'] / base:.2f}" if row["steady"] and base else "n/a"
        print(f"{MODES[mode]:<34} {row['walls'][str(small)]:>9.1f} "
              f"{row['walls'][str(large)]:>10.1f} {steady:>13} {ratio:>9} "
              f"{row['launcher']:>13.0f} {row['load']:>5.1f}  {peaks}")
    for mode in [mode for mode in MODES if "start-up" in rows.get(mode, {})]:
        print(f"{MODES[mode]}: cluster start and warm-up {rows[mode]['start-up']:.1f} s "
              f"(not in the walls)")
    print(machine_line())


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
    parser.add_argument("--small", type=int, default=1000, help="images in the small set")
    parser.add_argument("--large", type=int, default=10000, help="images in the large set")
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--data", choices=("photos", "fashion_mnist"), default="photos",
                        help="photos: 480x360 JPEGs made from Debian's photographs (12 classes)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--work", type=Path,
                        help="keep the image sets here between runs (default: a temporary folder)")
    parser.add_argument("--results", type=Path,
                        help="JSON file the rows are added to: measure one mode per run (each "
                             "under the CPU lock) and print the rows of every run so far")
    parser.add_argument("--skip_extraction", action="store_true")
    parser.add_argument("--skip_loading", action="store_true")
    args = cli.parse(parser, {"small": 20, "large": 40, "vectors": 1000,
                              "data": "fashion_mnist"})
    modes = [mode for mode in args.modes.split(",") if mode]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"--modes: unknown {unknown}; pick from {list(MODES)}")
    print(f"{machine_line()} at start")
    with tempfile.TemporaryDirectory(prefix="bench_beam_") as temporary:
        work = args.work or Path(temporary)
        if not args.skip_extraction:
            bench_extraction(work, args.data, args.small, args.large, modes, args.results)
        if not args.skip_loading:
            bench_loading(Path(temporary), args.vectors)


if __name__ == "__main__":
    main()
