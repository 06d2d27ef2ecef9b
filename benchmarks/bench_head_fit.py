"""Benchmark the default head fit (lbfgs, `training.convex.fit_head`) on real cached vectors,
this checkout against a baseline checkout in the same run, alternating.

Data: the vectors of an image folder as `retrain` splits it (--image_dir, its cache in
--bottleneck_dir; default: --per_class Fashion-MNIST images per class, extracted into a
temporary cache), or with --simulate N: N vectors in --classes classes simulated from them as
`build_scale_cache` does (k-means classes of the real vectors, each vector a mix of two members
plus noise), split 80/10/10. Each round fits the head once per checkout, each in a fresh
process, and prints its seconds, the memory the fit added to the process (peak resident memory
during the fit minus the resident memory before it), the chosen penalty and the fitted layer's
validation and test accuracy on the vectors. The vectors are prepared once, outside the timing.

    python -m benchmarks.bench_head_fit [--image_dir DIR --bottleneck_dir DIR] \
        [--simulate 100000 --classes 1000] [--baseline /path/to/other/checkout] [--rounds 3] \
        [--cpu_lock /work/team/cpu.lock] [--smoke]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from benchmarks import cli
from benchmarks.data import fashion_mnist_folder
from benchmarks.timing import cpu_lock, machine_line

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("training", "validation", "testing")

# Runs in the checkout under test (its `retrainer` first on sys.path): one fit, one JSON line.
CHILD = """
import json, sys, time
import numpy as np
from retrainer.io.host import peak_memory_bytes, reset_peak_memory
from retrainer.training.convex import fit_head

data = np.load(sys.argv[1])
classes = int(data["classes"])
arrays = {name: data[name] for name in data.files}

def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096

before = resident()
reset_peak_memory()
started = time.perf_counter()
fit = fit_head(arrays["training_x"], arrays["training_y"], arrays["validation_x"],
               arrays["validation_y"], classes)
seconds = time.perf_counter() - started
added = peak_memory_bytes() - before

def accuracy(split):
    logits = arrays[split + "_x"] @ fit.weights + fit.biases
    return float(np.mean(np.argmax(logits, axis=1) == arrays[split + "_y"]))

print(json.dumps({"seconds": seconds, "added_gib": added / 2**30, "l2": fit.l2,
                  "validation": accuracy("validation"), "test": accuracy("testing"),
                  "iterations": sum(point.iterations for point in fit.path)}))
"""


def folder_vectors(image_dir: Path, cache: Path) -> dict[str, np.ndarray]:
    """{split_x: float32 [n, D], split_y: int64 [n]} of the folder's cached (or new) vectors,
    split as `retrain` splits it (default percentages)."""
    from retrainer.cache.bottlenecks import compute_bottlenecks
    from retrainer.data.discovery import discover_images
    from retrainer.engines.factory import create_engine
    from retrainer.extractors import create_extractor

    collection = discover_images(image_dir)
    engine = create_engine(create_extractor("efficientnet_lite0"), "auto")
    found = compute_bottlenecks([image.path for image in collection.images], engine, cache,
                                show_progress=False)
    splits = np.array([image.split for image in collection.images])[found.ok]
    labels = np.array([image.label_index for image in collection.images], np.int64)[found.ok]
    vectors = found.vectors[found.ok]
    arrays = {}
    for split in SPLITS:
        arrays[f"{split}_x"], arrays[f"{split}_y"] = vectors[splits == split], labels[
            splits == split]
    arrays["classes"] = np.array(len(collection.labels))
    return arrays


def simulated(arrays: dict[str, np.ndarray], count: int, classes: int,
              noise: float = 0.25, seed: int = 0) -> dict[str, np.ndarray]:
    """`count` vectors in `classes` classes simulated from the real ones (build_scale_cache's
    recipe), split 80/10/10 at random."""
    from benchmarks.build_scale_cache import spherical_kmeans

    rng = np.random.default_rng(seed)
    real = np.concatenate([arrays[f"{split}_x"] for split in SPLITS])
    assignment = spherical_kmeans(real, classes, rng)
    pools = [np.flatnonzero(assignment == cluster) for cluster in range(classes)]
    pools = [pool if len(pool) else rng.integers(len(real), size=1) for pool in pools]
    labels = rng.permutation(np.arange(count) % classes)
    first = np.array([rng.choice(pools[label]) for label in labels])
    second = np.array([rng.choice(pools[label]) for label in labels])
    mix = rng.random((count, 1), dtype=np.float32)
    vectors = mix * real[first] + (1 - mix) * real[second]
    vectors += (noise * real.std(axis=0)).astype(np.float32) * rng.standard_normal(
        vectors.shape, dtype=np.float32)
    np.maximum(vectors, 0, out=vectors)
    cuts = (int(0.8 * count), int(0.9 * count))
    result = {"classes": np.array(classes)}
    for split, part in zip(SPLITS, np.split(np.arange(count), cuts)):
        result[f"{split}_x"], result[f"{split}_y"] = vectors[part], labels[part]
    return result


def fit_in(checkout: Path, data: Path) -> dict[str, Any]:
    """One fit in a fresh process whose `retrainer` is `checkout`'s."""
    done = subprocess.run([sys.executable, "-c", CHILD, str(data)], cwd=checkout,
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(checkout)})
    if done.returncode != 0:
        sys.exit(f"the fit in {checkout} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: Optional[list[str]] = None) -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--image_dir", type=Path, help="class folders whose vectors to fit")
    parser.add_argument("--bottleneck_dir", type=Path, help="their cache (it may be written)")
    parser.add_argument("--per_class", type=int, default=100,
                        help="without --image_dir: Fashion-MNIST images per class")
    parser.add_argument("--simulate", type=int, default=0, help="N simulated vectors (0: none)")
    parser.add_argument("--classes", type=int, default=1000, help="classes of --simulate")
    parser.add_argument("--baseline", type=Path, help="another checkout of retrainer")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpu_lock", help="hold this flock for each round")
    args = cli.parse(parser, {"per_class": 3, "rounds": 1}, argv)
    sides = {"this": REPO, **({"baseline": args.baseline} if args.baseline else {})}
    with tempfile.TemporaryDirectory() as scratch:
        image_dir = args.image_dir or fashion_mnist_folder(Path(scratch) / "images",
                                                           args.per_class)
        arrays = folder_vectors(image_dir, args.bottleneck_dir or Path(scratch) / "cache")
        if args.simulate:
            arrays = simulated(arrays, args.simulate, args.classes)
        data = Path(scratch) / "vectors.npz"
        np.savez(data, **arrays)
        shape = ", ".join(f"{split} {len(arrays[f'{split}_y']):,}" for split in SPLITS)
        print(f"{image_dir}{f' simulated x{args.simulate:,}' if args.simulate else ''}: "
              f"{int(arrays['classes'])} classes, {shape}", flush=True)
        results: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
        for round_index in range(args.rounds):
            for side, checkout in sides.items():
                with cpu_lock(args.cpu_lock):
                    load = machine_line()
                    result = fit_in(checkout, data)
                results[side].append(result)
                print(f"  round {round_index + 1} {side:<8} {result['seconds']:7.2f} s, "
                      f"+{result['added_gib']:.2f} GiB, l2 {result['l2']:.3g}, "
                      f"{result['iterations']} iterations, validation "
                      f"{result['validation'] * 100:.2f} %, test {result['test'] * 100:.2f} % "
                      f"({load})", flush=True)
    medians = {side: statistics.median(r["seconds"] for r in rows)
               for side, rows in results.items()}
    for side, seconds in medians.items():
        print(f"{side}: median {seconds:.2f} s")
    if "baseline" in medians:
        print(f"this / baseline = {medians['this'] / medians['baseline']:.2f}")


if __name__ == "__main__":
    main()
