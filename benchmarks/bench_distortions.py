"""Benchmark training on images (distortions, fine-tuning) with the real efficientnet_lite0, one run.

On N real Fashion-MNIST images (10 classes), each `retrain` a real process:
(a) cost: cold distorted run (empty cache) / cold plain run (target <= ~10x); warm distorted rerun
    / warm plain rerun (target <= ~2x);
(b) accuracy of the exported frozen graph (loaded and run the way label_image.py does) on the run's
    test split and on held-out t10k images: plain vs distorted, for each --distorted_variants;
(c) frozen vs --do_fine_tuning, for each --fine_tune_blocks and --fine_tune_learning_rate given:
    accuracy (same exported-graph measure) and wall time.

    python -m benchmarks.bench_distortions [--images 1000] [--holdout 500]
        [--variants 1,2,4,8] [--fine_tune 2@0.001,2@0.01] [--parts cost,variants,fine_tune]
        [--smoke]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import cli
from benchmarks.data import fashion_mnist_folder
from benchmarks.timing import ENV, machine_line

COLD_TARGET, WARM_TARGET = 10.0, 2.0
DISTORTIONS = ("--flip_left_right", "--random_crop", "10", "--random_scale", "10",
               "--random_brightness", "10")


def retrain(work: Path, steps: tuple[str, ...], name: str, images: Path, cache: Path,
            *flags: str) -> dict:
    """One `retrain` process; returns its --json document plus "wall" seconds and "graph"."""
    out = work / name
    command = [sys.executable, "-m", "retrainer.cli.retrain", "--image_dir", str(images),
               "--bottleneck_dir", str(cache), "--output_graph", str(out / "graph.pb"),
               "--output_labels", str(out / "labels.txt"), "--summaries_dir", str(out / "logs"),
               "--checkpoint_path", str(out / "checkpoint" / "head"), "--json",
               "--logging_verbosity", "ERROR", *steps, *flags]
    started = time.perf_counter()
    done = subprocess.run(command, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    document = json.loads(done.stdout)
    document.update(wall=wall, graph=out / "graph.pb", labels_file=out / "labels.txt")
    print(f"  {name}: {wall:.1f} s, test accuracy (head's evaluation) "
          f"{document['test_accuracy']:.3f}", flush=True)
    if document.get("fine_tuning"):
        history = document["fine_tuning"]["history"]
        print("    validation accuracy / cross entropy per epoch: " + ", ".join(
            f"{point['validation_accuracy']:.3f}/{point['validation_cross_entropy']:.3f}"
            for point in history), flush=True)
    return document


def labelled_files(images: Path, split: str | None) -> list[tuple[Path, int]]:
    """(file, label index) of the images of one split as retrain splits them (None: all)."""
    from retrainer.data.discovery import discover_images

    collection = discover_images(images, 10, 10)
    return [(image.path, image.label_index) for image in collection.images
            if split is None or image.split == split]


def graph_accuracy(graph: Path, files: list[tuple[Path, int]]) -> float:
    """Top-1 accuracy of the exported frozen graph, fed as label_image.py does (Placeholder ->
    final_result, pixels / 255)."""
    import tensorflow as tf

    from retrainer.data.decoding import load_image

    graph_def = tf.compat.v1.GraphDef.FromString(graph.read_bytes())
    with tf.Graph().as_default() as imported:
        tf.compat.v1.import_graph_def(graph_def, name="")
    size = imported.get_tensor_by_name("Placeholder:0").shape[1]
    correct = 0
    with tf.compat.v1.Session(graph=imported) as session:
        for start in range(0, len(files), 64):
            chunk = files[start:start + 64]
            pixels = np.stack([load_image(path, (size, size)) for path, _ in chunk]) / 255.0
            scores = session.run("final_result:0", {"Placeholder:0": pixels.astype(np.float32)})
            correct += sum(int(np.argmax(row) == label) for row, (_, label) in zip(scores, chunk))
    return correct / len(files)


def accuracies(run: dict, tests: list, holdout: list) -> tuple[float, float]:
    return graph_accuracy(run["graph"], tests), graph_accuracy(run["graph"], holdout)


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--holdout", type=int, default=500)
    parser.add_argument("--variants", default="1,2,4,8")
    parser.add_argument("--fine_tune", default="2@0.001,2@0.01,1@0.01,4@0.01",
                        help="comma-separated BLOCKS@LEARNING_RATE fine-tuning runs")
    parser.add_argument("--parts", default="cost,variants,fine_tune")
    parser.add_argument("--fine_tune_flags", default="",
                        help="extra retrain flags for every fine-tuning run")
    parser.add_argument("--steps", type=int, default=None,
                        help="--how_many_training_steps of every run (default: retrain's)")
    args = cli.parse(parser, {"images": 100, "holdout": 10, "variants": "1",
                              "fine_tune": "1@0.01", "steps": 10})
    steps = () if args.steps is None else ("--how_many_training_steps", str(args.steps))
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory(prefix="bench_distortions_") as scratch:
        work = Path(scratch)
        images = fashion_mnist_folder(work / "images", args.images // 10)
        holdout = fashion_mnist_folder(work / "holdout", args.holdout // 10, subset="t10k")
        tests = labelled_files(images, "testing")
        holdout_files = labelled_files(holdout, None)
        print(machine_line())
        print(f"{args.images} train-subset images ({len(tests)} in the test split), "
              f"{args.holdout} t10k holdout images; machine shared, ratios from one run.")
        rows = []
        plain = retrain(work, steps, "cold_plain", images, work / "plain_cache")
        rows.append(("plain (frozen)", plain, *accuracies(plain, tests, holdout_files)))
        if "cost" in parts:
            distorted = retrain(work, steps, "cold_distorted", images, work / "distorted_cache",
                                *DISTORTIONS)
            warm_plain = retrain(work, steps, "warm_plain", images, work / "plain_cache")
            warm_distorted = retrain(work, steps, "warm_distorted", images, work / "distorted_cache",
                                     *DISTORTIONS)
            cold = distorted["wall"] / plain["wall"]
            warm = warm_distorted["wall"] / warm_plain["wall"]
            print(f"\n| run | plain s | distorted s | ratio | target |\n|---|---|---|---|---|\n"
                  f"| cold (empty cache) | {plain['wall']:.1f} | {distorted['wall']:.1f} | "
                  f"{cold:.2f}x | <= {COLD_TARGET:g}x {'ok' if cold <= COLD_TARGET else 'MISSED'} |"
                  f"\n| warm rerun | {warm_plain['wall']:.1f} | {warm_distorted['wall']:.1f} | "
                  f"{warm:.2f}x | <= {WARM_TARGET:g}x {'ok' if warm <= WARM_TARGET else 'MISSED'} |")
        if "variants" in parts:
            for variants in [int(value) for value in args.variants.split(",")]:
                run = retrain(work, steps, f"variants_{variants}", images, work / "distorted_cache",
                              *DISTORTIONS, "--distorted_variants", str(variants))
                rows.append((f"distorted, {variants} variants", run,
                             *accuracies(run, tests, holdout_files)))
        if "fine_tune" in parts:
            for setting in args.fine_tune.split(","):
                blocks, rate = setting.split("@")
                run = retrain(work, steps, f"fine_tune_{blocks}_{rate}", images, work / "plain_cache",
                              "--do_fine_tuning", "--fine_tune_blocks", blocks,
                              "--fine_tune_learning_rate", rate, *args.fine_tune_flags.split())
                rows.append((f"fine-tuned, {blocks} blocks, lr {rate}", run,
                             *accuracies(run, tests, holdout_files)))
        print("\n| run | test split acc (graph) | t10k holdout acc (graph) | wall s | "
              "distort s | fine-tune s |\n|---|---|---|---|---|---|")
        for name, run, test_accuracy, holdout_accuracy in rows:
            distort = run["seconds"].get("distort")
            tune = run["seconds"].get("fine_tune")
            print(f"| {name} | {test_accuracy:.3f} | {holdout_accuracy:.3f} | {run['wall']:.1f} | "
                  f"{'-' if distort is None else f'{distort:.1f}'} | "
                  f"{'-' if tune is None else f'{tune:.1f}'} |")


if __name__ == "__main__":
    main()
