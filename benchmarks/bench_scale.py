"""Benchmark every stage after extraction at 10k, 100k and 1M images: wall, peak memory, growth.

On the simulated dataset of `benchmarks.build_scale_cache` (1,000 classes; real Fashion-MNIST and
photo vectors mixed plus noise; every vector already cached), `retrain` runs with default flags on
its subsets of 10, 100 and 1,000 images per class, each size twice: the first run after
extraction (the audit's findings, the file index and the heat maps removed from the cache, so
the audit runs and every file is hashed; the audit's signatures kept, as the extraction stage
writes them) and a warm rerun. Each is a real process; its `--json`
gives the wall time of every part of the run (`seconds`) and each stage's peak resident memory
(`peak_memory_gib`: the kernel's high-water mark, reset at each stage boundary); the process's
own peak is also sampled from the kernel (its resident memory every 50 ms): the kernel's
lifetime peak (wait4's ru_maxrss) cannot be used, since each reset of the high-water mark
(clear_refs) forgets the peaks before it.

Printed per stage: seconds and peak GiB at each size, and the growth exponent b of seconds ~ N^b
(least squares over the sizes, and between consecutive sizes). Targets: every stage at most
N log N (b <= 1 + 1/ln N, about 1.1 here), peak memory at most the vectors (N x D float32) plus
2 GiB, the first 1M run within 10 minutes on 2 cores.

    python -m benchmarks.bench_scale [--data /work/team/data/scale_1m]
        [--sizes 10,100,1000] [--lock /work/team/cpu.lock] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from benchmarks import cli
from benchmarks.timing import ENV, cpu_lock, machine_line

SHARED_DATA = Path("/work/team/data/scale_1m")
TARGET_SECONDS_1M = 600
MEMORY_MARGIN_GIB = 2.0


def image_folder(data: Path, per_class: int, manifest: dict[str, Any]) -> Path:
    """The subset folder of `per_class` images per class (`images/` for all of them)."""
    return data / ("images" if per_class == manifest["per_class"] else f"images_{per_class}")


def forget_first_run_state(bottleneck_dir: Path) -> None:
    """Remove what a first run after extraction has not yet built: the audit's cached findings,
    the file index and the report's heat maps (paths from `retrainer.cache.layout`). The audit's
    signatures stay: the extraction stage writes them (build_scale_cache does too)."""
    from retrainer.cache import layout

    for folder in (layout.audit_findings_folder(bottleneck_dir),
                   layout.file_index_folder(bottleneck_dir),
                   layout.heat_maps_path(bottleneck_dir, "00").parent.parent):
        shutil.rmtree(folder, ignore_errors=True)


def timed_run(command: list[str], cwd: Path, lock: Optional[str], kind: str
              ) -> tuple[dict, float, float]:
    """(the --json document, wall seconds, the process's peak resident memory in GiB, sampled);
    the document is kept as `<cwd>/<kind>.json`."""
    stdout, stderr = cwd / f"{kind}.json", cwd / f"{kind}.stderr.txt"
    with cpu_lock(lock), open(stdout, "w") as out, open(stderr, "w") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=ENV, stdout=out, stderr=err)
        peak = resident_peak(process)
        wall = time.perf_counter() - started
    if process.returncode != 0:
        sys.exit(f"{' '.join(command[:6])} failed:\n{stderr.read_text()[-3000:]}")
    return json.loads(stdout.read_text()), wall, peak / 2**30


def resident_peak(process: subprocess.Popen, interval: float = 0.05) -> int:
    """The largest resident memory (bytes) of `process` seen every `interval` seconds until it
    exits (VmRSS in /proc/<pid>/status)."""
    peak = 0
    status = Path(f"/proc/{process.pid}/status")
    while process.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except (OSError, ValueError, IndexError):
            pass
        time.sleep(interval)
    return peak


def growth(sizes: list[int], seconds: list[float]) -> tuple[float, list[float]]:
    """(least-squares exponent b of seconds ~ N^b, exponents between consecutive sizes)."""
    logs_n, logs_t = np.log(sizes), np.log(np.maximum(seconds, 1e-3))
    overall = float(np.polyfit(logs_n, logs_t, 1)[0]) if len(sizes) > 1 else math.nan
    steps = [float((logs_t[i + 1] - logs_t[i]) / (logs_n[i + 1] - logs_n[i]))
             for i in range(len(sizes) - 1)]
    return overall, steps


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--data", default=str(SHARED_DATA), help="build_scale_cache's --out")
    parser.add_argument("--sizes", default="10,100,1000", help="images per class of each run")
    parser.add_argument("--lock", help="a lock file to flock around each retrain process")
    parser.add_argument("--work", help="folder for the runs' outputs (default: a temp folder)")
    parser.add_argument("--kinds", default="first,warm",
                        help="which runs at each size: first (after extraction), warm, or both")
    args = cli.parse(parser, {"sizes": "2,5,20"})
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work or scratch)
        data = Path(args.data)
        if args.smoke:
            data = smoke_data(work)
        measure(args, data, work)


def smoke_data(work: Path) -> Path:
    """A tiny dataset built by build_scale_cache --smoke."""
    out = work / "scale_smoke"
    subprocess.run([sys.executable, "-m", "benchmarks.build_scale_cache", "--smoke", "--out",
                    str(out)], env=ENV, check=True, stdout=subprocess.DEVNULL)
    return out


def measure(args: argparse.Namespace, data: Path, work: Path) -> None:
    manifest = json.loads((data / "manifest.json").read_text())
    sizes_per_class = [int(value) for value in args.sizes.split(",")]
    bottleneck_dir = data / "bottlenecks"
    print(f"simulated data {data}: {manifest['classes']} classes, vectors of "
          f"{manifest['extractor_id']}; {machine_line()}", flush=True)
    table: dict[str, dict[str, dict[int, tuple[float, float]]]] = {}
    counts = []
    for per_class in sizes_per_class:
        images = image_folder(data, per_class, manifest)
        count = per_class * manifest["classes"]
        counts.append(count)
        out = work / f"run_{count}"
        out.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "retrainer.cli.retrain", "--image_dir", str(images),
                   "--bottleneck_dir", str(bottleneck_dir), "--json", "--quiet"]
        kinds = args.kinds.split(",")
        if "first" in kinds:
            forget_first_run_state(bottleneck_dir)
        for kind in kinds:
            document, wall, peak = timed_run(command, out, args.lock, kind)
            seconds = document["seconds"]
            memory = document.get("peak_memory_gib", {})
            print(f"  N={count:>9,} {kind:5s} run: wall {wall:7.1f} s, accounted "
                  f"{seconds.get('total', math.nan):7.1f} s, peak {peak:.2f} GiB sampled, "
                  f"{memory.get('total', math.nan):.2f} GiB --json; test accuracy "
                  f"{document['test_accuracy'] * 100:.1f} % ({machine_line()})", flush=True)
            for stage, value in seconds.items():
                table.setdefault(kind, {}).setdefault(stage, {})[count] = (
                    value, memory.get(stage, math.nan))
    vectors_gib = {count: count * 1280 * 4 / 2**30 for count in counts}
    for kind, stages in table.items():
        print(f"\n{kind} run after extraction | " + " | ".join(
            f"N={count:,}: s, peak GiB" for count in counts) + " | b (all) | b per step")
        for stage, by_count in stages.items():
            present = [count for count in counts if count in by_count]
            values = [by_count[count][0] for count in present]
            overall, steps = growth(present, values)
            cells = " | ".join(f"{by_count[count][0]:8.2f} {by_count[count][1]:5.2f}"
                               for count in present)
            print(f"  {stage:14s} | {cells} | {overall:5.2f} | "
                  + " ".join(f"{step:5.2f}" for step in steps))
        peaks = {count: max((value[1] for value in
                             (stages[stage].get(count, (0, 0)) for stage in stages)
                             if not math.isnan(value[1])), default=math.nan)
                 for count in counts}
        print("  peak memory vs target (vectors + 2 GiB): " + ", ".join(
            f"N={count:,}: {peaks[count]:.2f} / {vectors_gib[count] + MEMORY_MARGIN_GIB:.2f} GiB"
            for count in counts))
    largest, kind = counts[-1], next(iter(table))
    total = table[kind]["total"][largest][0]
    print(f"\n{kind} run at N={largest:,}: {total:.0f} s (target for the first run: <= "
          f"{TARGET_SECONDS_1M} s at 1M on 2 cores)")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
