"""Timing helpers shared by the benchmarks: the machine line, child processes, best-of timing,
CPU time, the extraction engine alone and the whole bottleneck stage, peak memory.

The machine is shared: keep ratios against a baseline measured in the same run, and print the
load average next to every figure (`machine_line`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
# For child processes: this checkout's retrainer, and TensorFlow's start-up chatter off.
ENV = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}


def machine_line() -> str:
    """"N CPUs, load average a b c": to print beside every figure."""
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"{os.cpu_count()} CPUs, load average {load}"


@contextlib.contextmanager
def cpu_lock(path: Optional[str]) -> Iterator[None]:
    """Hold an exclusive flock on `path` (a shared machine's CPU lock) for the block; no lock
    when `path` is None. Lets a long benchmark take the lock per measurement, not for hours.
    Test suites queued on the same lock (`flock PATH ... pytest` processes) go first."""
    if path is None:
        yield
        return
    while subprocess.run(["pgrep", "-f", f"flock {path}.*pytest"],
                         stdout=subprocess.DEVNULL).returncode == 0:
        time.sleep(30)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def best_of(repeats: int, work: Callable[[], Any]) -> float:
    """The fastest of `repeats` calls of `work`, in wall seconds."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def timed_process(command: Sequence[str], cwd: str | os.PathLike[str] | None = None) -> float:
    """Wall seconds of one child process (stdout dropped); exits with its stderr if it fails."""
    started = time.perf_counter()
    done = subprocess.run(list(command), cwd=cwd, env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(map(str, command[:4]))} failed ({done.returncode}):\n"
                 f"{done.stderr[-3000:]}")
    return time.perf_counter() - started


def engine_seconds(engine: Callable[[np.ndarray], Any], pixels: np.ndarray,
                   batch_size: int) -> tuple[float, float]:
    """(wall, CPU of all threads) seconds of the engine alone over pre-decoded uint8 [N, H, W, 3]
    pixels, batch by batch (the first batch run once before, untimed: tracing and warm-up)."""
    batches = [pixels[start:start + batch_size] for start in range(0, len(pixels), batch_size)]
    engine(batches[0])
    started, cpu_started = time.perf_counter(), time.process_time()
    for batch in batches:
        engine(batch)
    return time.perf_counter() - started, time.process_time() - cpu_started


def stage_seconds(engine: Any, paths: Sequence[Path], cache: Path, batch_size: int) -> float:
    """Wall seconds of the bottleneck stage (compute_bottlenecks) from files into an empty cache."""
    from retrainer.cache.bottlenecks import compute_bottlenecks

    started = time.perf_counter()
    result = compute_bottlenecks(paths, engine, cache, batch_size=batch_size, show_progress=False)
    seconds = time.perf_counter() - started
    if result.computed != len(paths):
        raise RuntimeError(f"the stage computed {result.computed} of {len(paths)} vectors")
    return seconds


def peak_rss_gib() -> float:
    """This process's peak resident memory so far, GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
