"""Benchmark a warm rerun (every vector cached) against a bare `python -c "import tensorflow"`,
in alternating rounds, and show where the rerun's time goes.

- N real Fashion-MNIST images (default 1,000), default flags: a first run fills the cache
  (untimed); then each round times a bare `import tensorflow` and a warm `retrain`, each a real
  process. Printed: each round's ratio warm / import and their median (target <= 1.5), and the
  median of each part of the rerun's `"seconds"` (its `Took`), with the process's wall and peak
  memory (the kernel's, wait4).
- --image_dir / --bottleneck_dir: the same on a dataset whose vectors are cached there, e.g. the
  70,000 Fashion-MNIST images (target: <= 15 s, <= 2.5 GiB peak). The run writes its file index
  and audit findings into that cache: give it a copy of a shared one.
- --baseline PATH: each round also times the same rerun with the retrainer of another checkout
  (e.g. main before a change), so a change's gain is measured in the same run.
- --changed: each round also times a rerun with a changed head flag (--learning_rate, a new
  value each round: the SGD head, a new graph), which needs TensorFlow again. Printed with
  whether each kind of rerun imported TensorFlow (from `python -X importtime`).

    python -m benchmarks.bench_warm [--images 1000] [--rounds 3] [--image_dir DIR
        --bottleneck_dir DIR] [--baseline PATH] [--changed] [--smoke]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from benchmarks import cli
from benchmarks.data import fashion_mnist_folder
from benchmarks.timing import ENV, machine_line

RATIO_TARGET = 1.5


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak resident GiB, stdout) of one process; exits if it fails. With
    `-X importtime` in the command, stdout gets a last line: "tensorflow imported: yes|no"."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        errors = err.read()
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"{' '.join(command[:5])} failed:\n{errors[-3000:]}")
        return wall, usage.ru_maxrss / 2**20, out.read()


def imported_tensorflow(command: list[str], cwd: Path, env: dict[str, str]) -> bool:
    """Whether `command` (a Python process) imports TensorFlow: its own import log says."""
    process = subprocess.run([command[0], "-X", "importtime", *command[1:]], cwd=cwd, env=env,
                             capture_output=True, text=True)
    return any(line.startswith("import time:")
               and line.rsplit("|", 1)[-1].strip().split(".")[0] == "tensorflow"
               for line in process.stderr.splitlines())  # the package or any of its modules


def retrain_command(image_dir: Path, bottleneck_dir: Path, smoke: bool) -> list[str]:
    command = [sys.executable, "-m", "retrainer.cli.retrain", "--image_dir", str(image_dir),
               "--bottleneck_dir", str(bottleneck_dir), "--json", "--quiet"]
    return command + (["--skip_audit", "--report_explanations", "0"] if smoke else [])


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--images", type=int, default=1000, help="Fashion-MNIST images (10 classes)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image_dir", help="another dataset, its vectors in --bottleneck_dir")
    parser.add_argument("--bottleneck_dir", help="with --image_dir: its cache (a copy)")
    parser.add_argument("--baseline", help="another checkout of retrainer to time alike")
    parser.add_argument("--changed", action="store_true",
                        help="also time a rerun with a changed head flag each round")
    args = cli.parse(parser, {"images": 20, "rounds": 1})
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        if args.image_dir:
            image_dir, cache = Path(args.image_dir), Path(args.bottleneck_dir)
        else:
            image_dir = fashion_mnist_folder(work / "images", max(1, args.images // 10))
            cache = work / "cache"
        measure(image_dir, cache, work, args.rounds, args.baseline, args.smoke, args.changed)


def measure(image_dir: Path, cache: Path, work: Path, rounds: int, baseline: Optional[str],
            smoke: bool, changed: bool = False) -> None:
    command = retrain_command(image_dir, cache, smoke)
    sides = {"retrainer": ENV}
    if baseline:
        sides["baseline"] = {**ENV, "PYTHONPATH": str(Path(baseline).resolve())}
    for env in sides.values():
        timed(command, work, env)  # fills the cache (and the file index)
    print(f"warm rerun of {image_dir} (vectors in {cache}); {machine_line()}", flush=True)
    print("imports tensorflow: " + ", ".join(
        f"{name} {'yes' if imported_tensorflow(command, work, env) else 'no'}"
        for name, env in sides.items()), flush=True)
    imports, walls, peaks, parts = [], {name: [] for name in sides}, [], []
    changed_walls: list[float] = []
    for round_ in range(rounds):
        imports.append(timed([sys.executable, "-c", "import tensorflow"], work, ENV)[0])
        for name, env in sides.items():
            wall, peak, stdout = timed(command, work, env)
            walls[name].append(wall)
            if name == "retrainer":
                peaks.append(peak)
                parts.append(json.loads(stdout)["seconds"])
        if changed:  # a value no earlier round used: nothing of its head is kept
            changed_walls.append(timed(command + ["--learning_rate", f"0.0{round_ + 11}"],
                                       work, ENV)[0])
            print(f"  round {round_ + 1}: changed head flag {changed_walls[-1]:.2f} s "
                  f"({changed_walls[-1] / imports[-1]:.2f}x the import)", flush=True)
        print(f"  round {round_ + 1}: import tensorflow {imports[-1]:.2f} s, " + ", ".join(
            f"{name} {values[-1]:.2f} s ({values[-1] / imports[-1]:.2f}x)"
            for name, values in walls.items()) + f"; {machine_line()}", flush=True)
    ratios = [wall / base for wall, base in zip(walls["retrainer"], imports)]
    print(f"warm rerun / bare import: median {statistics.median(ratios):.2f} "
          f"(rounds: {', '.join(f'{ratio:.2f}' for ratio in ratios)}; target <= {RATIO_TARGET}); "
          f"wall median {statistics.median(walls['retrainer']):.2f} s, peak "
          f"{max(peaks):.2f} GiB")
    if baseline:
        gains = [base / new for base, new in zip(walls["baseline"], walls["retrainer"])]
        print(f"baseline ({baseline}) / retrainer: median {statistics.median(gains):.2f}x "
              f"({statistics.median(walls['baseline']):.2f} s -> "
              f"{statistics.median(walls['retrainer']):.2f} s)")
    if changed_walls:
        print(f"rerun with a changed head flag: median {statistics.median(changed_walls):.2f} s")
    print("parts of the rerun's Took (median s): " + ", ".join(
        f"{part} {statistics.median(seconds.get(part, 0.0) for seconds in parts):.2f}"
        for part in dict.fromkeys(part for seconds in parts for part in seconds)))


if __name__ == "__main__":
    main()
