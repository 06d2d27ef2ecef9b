"""Benchmark retrainer against its peers on the same images, every side in one run, repeated:

- make_image_classifier, TensorFlow Hub's last version (removed from tensorflow/hub in 2023; not
  part of this repository): pass the path of its `make_image_classifier.py` with --peer_script
  (its `make_image_classifier_lib.py` beside it). It runs with its default flags (5 epochs, batch
  32, SGD with momentum, a 20 % validation split, tf.data input), as a real process;
- the Keras recipe a user would write, defined in this file: `image_dataset_from_directory` (80/20
  split, cached, prefetched), `Rescaling`, the extractor as a `hub.KerasLayer`, `Dense` with
  softmax, Adam, 5 epochs, `tf.saved_model.save`;
- retrainer with default flags, cold (an empty --bottleneck_dir, on a machine where retrainer has
  run before: what it keeps per machine under ${XDG_CACHE_HOME:-~/.cache}/retrainer, such as the
  int8 engine's converted model, is there; the benchmark keeps that cache in its work folder and
  fills it with one untimed run first, on the same images in other folders: that cache is keyed
  by the model's structure -- the int8 model, the specs, graph templates per test-time
  augmentation mode -- never by image content; a first run on other images can choose
  another augmentation mode, and the cold run then traces its graph with TensorFlow), warm
  (the same command again, on that --bottleneck_dir, from another folder: every output written
  anew), rerun (the same command again in the cold side's folder, as a user reruns it: its
  outputs there; the cold export is evaluated first),
  first (cold on a machine where it never ran: that per-machine cache empty too), and cold at
  --extractor_precision float32, the peers' precision (retrainer's default `auto` runs the
  extractor at int8 where the CPU has fast int8, else float32; the peers always run it at
  float32; the table names each side's precision);
- with --baseline PATH, "baseline cold": the cold side with the retrainer of another checkout
  (e.g. main's), run just before the cold side of each round: a change's gain, in the same run.

Each retrainer checkout's sources are compiled to bytecode (`compileall`) before the rounds, as
pip compiles a package it installs and as the peers' TensorFlow and Keras are: a checkout run
with PYTHONDONTWRITEBYTECODE set (or from a read-only folder) would otherwise compile all of
retrainer's modules in every timed run (~0.1 s of a cold run).

Every side gets the same EfficientNet-Lite0 weights at the same 224x224 input: no model hub is
reachable, so the benchmark writes retrainer's own Lite0 as a TF2 SavedModel (the image feature
vector interface: float32 [N, 224, 224, 3] in [0, 1] -> [N, 1280]) and hands it to the peers as
their module. Every side trains on about 80 % of the images (the peers' 20 % validation split,
retrainer's default 10 % validation + 10 % test split by file-name hash).

Every figure is the wall time of a whole process, start-up and `import tensorflow` included, on N
real Fashion-MNIST training images (default 1,000 and 10,000). Test accuracy is measured on what
each side exported, every round, on the same held-out images (Fashion-MNIST's t10k set, which no
side trains on): retrainer's frozen graph through `label-image`, the peers' SavedModels through
their serving signature, fed as each side's training pipeline feeds it. The peers' times vary from
run to run, so each round runs every side back to back and the ratios are each round's (peer /
side). --lock takes the shared CPU lock around each side's run and evaluation (or each round's,
--lock_scope round), so that a long benchmark never holds it for long; with --work, results are
kept in DIR/results.json, so a size can be measured in several invocations (--sides), and the
table covers all of them.

    python -m benchmarks.bench_peers --peer_script PATH [--images 1000,10000] [--rounds 2]
        [--sides mic,keras,baseline,cold,warm,rerun,first,float32] [--baseline PATH]
        [--lock /work/team/cpu.lock [--lock_scope round]] [--work DIR] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from benchmarks import cli
from benchmarks.data import fashion_mnist_folder
from benchmarks.timing import ENV, cpu_lock, machine_line

IMAGE_SIZE = 224
PEER_ENV = "MAKE_IMAGE_CLASSIFIER"  # default for --peer_script
# Both peers use hub.KerasLayer, a tf_keras (Keras 2) layer.
KERAS2_ENV = {**ENV, "TF_USE_LEGACY_KERAS": "1"}
# Runs make_image_classifier.py from its folder: it imports its library as
# `tensorflow_hub.tools.make_image_classifier.make_image_classifier_lib`, a package that
# tensorflow_hub no longer ships, so that package is pointed at the script's folder.
PEER_RUNNER = """
import runpy, sys, types
from pathlib import Path
import tensorflow_hub
script = Path(sys.argv[1]).resolve()
for name in ("tensorflow_hub.tools", "tensorflow_hub.tools.make_image_classifier"):
    package = types.ModuleType(name)
    package.__path__ = [str(script.parent)]
    sys.modules[name] = package
sys.argv = [str(script), *sys.argv[2:]]
runpy.run_path(str(script), run_name="__main__")
"""


def write_hub_module(out: Path) -> Path:
    """retrainer's efficientnet_lite0 as a TF2 SavedModel with the image feature vector interface
    (`__call__`, `variables`, `trainable_variables`, `regularization_losses`)."""
    import tensorflow as tf

    from retrainer.extractors import create_extractor

    if (out / "saved_model.pb").is_file():
        return out
    extractor = create_extractor("efficientnet_lite0")
    module = tf.train.Checkpoint()
    module.extractor = extractor
    module.variables = list(extractor.variables)
    module.trainable_variables = []
    module.regularization_losses = []
    module.__call__ = tf.function(
        lambda images: extractor(images),
        input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32)])
    staging = out.with_name(out.name + ".tmp")
    tf.saved_model.save(module, str(staging))
    staging.rename(out)
    return out


def keras_recipe(image_dir: str, module: str, out: str, epochs: int) -> None:
    """The Keras transfer-learning recipe (runs in its own process: `--recipe`)."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf
    import tensorflow_hub as hub
    import tf_keras as keras

    options = dict(validation_split=0.2, seed=123, image_size=(IMAGE_SIZE, IMAGE_SIZE),
                   batch_size=32)
    train = keras.utils.image_dataset_from_directory(image_dir, subset="training", **options)
    validation = keras.utils.image_dataset_from_directory(image_dir, subset="validation",
                                                          **options)
    classes = len(train.class_names)
    train = train.cache().prefetch(tf.data.AUTOTUNE)
    validation = validation.cache().prefetch(tf.data.AUTOTUNE)
    model = keras.Sequential([
        keras.layers.Rescaling(1 / 255, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
        hub.KerasLayer(module, trainable=False),
        keras.layers.Dense(classes, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train, validation_data=validation, epochs=epochs, verbose=2)
    tf.saved_model.save(model, out)


def saved_model_accuracy(model_dir: str, test_dir: str, scale: float) -> None:
    """Print {"accuracy", "count"} of a Keras SavedModel's serving signature on `test_dir`, its
    images read as in training (`image_dataset_from_directory`), pixels divided by `scale`."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    serve = tf.saved_model.load(model_dir).signatures["serving_default"]
    (input_name,) = serve.structured_input_signature[1]
    images = keras.utils.image_dataset_from_directory(
        test_dir, shuffle=False, image_size=(IMAGE_SIZE, IMAGE_SIZE), batch_size=64)
    correct = count = 0
    for batch, labels in images:
        (probabilities,) = serve(**{input_name: batch / scale}).values()
        correct += int(np.sum(np.argmax(probabilities, axis=1) == labels.numpy()))
        count += len(labels)
    print(json.dumps({"accuracy": correct / count, "count": count}))


def retrainer_accuracy(run_dir: Path, test_dir: Path) -> dict[str, Any]:
    """Accuracy of retrainer's exported frozen graph on `test_dir`, through `label-image`."""
    graph = run_dir / "retrain_output" / "output_graph.pb"
    labels = (run_dir / "retrain_output" / "output_labels.txt").read_text().splitlines()
    folders = sorted(path.name for path in test_dir.iterdir() if path.is_dir())
    if len(labels) != len(folders):
        sys.exit(f"{len(labels)} labels for {len(folders)} test folders")
    done = subprocess.run(
        [sys.executable, "-m", "retrainer.cli.label_image", "--graph", str(graph), "--json",
         "--top_k", "1", str(test_dir)], env=ENV, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"label-image on {graph} failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    correct = sum(folders[labels.index(row["label"])] == Path(row["path"]).parent.name
                  for row in rows)
    return {"accuracy": correct / len(rows), "count": len(rows)}


def child_accuracy(model_dir: Path, test_dir: Path, scale: float) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_peers", "--evaluate", str(model_dir),
         str(test_dir), str(scale)], env=KERAS2_ENV, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"evaluating {model_dir} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def retrainer_env(machine_cache: Path, checkout: Optional[str] = None) -> dict[str, str]:
    """A retrain process's environment: `machine_cache` as XDG_CACHE_HOME (what retrainer keeps
    per machine), this checkout's retrainer or `checkout`'s."""
    env = {**ENV, "XDG_CACHE_HOME": str(machine_cache)}
    if checkout is not None:
        env["PYTHONPATH"] = str(Path(checkout).resolve())
    return env


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    """(wall seconds, stdout) of one process; exits if it fails."""
    cwd.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[:6])} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stdout


# --sides keys -> the table's names, in the order each round runs them.
SIDES = {"mic": "make_image_classifier", "keras": "keras recipe",
         "baseline": "baseline cold", "cold": "retrainer cold",
         "warm": "retrainer warm", "rerun": "retrainer rerun", "first": "retrainer first run",
         "float32": "retrainer cold float32"}
PEERS = ("make_image_classifier", "keras recipe")


class Sides:
    """How to run, and then evaluate, each side on one size's images in one round's folder."""

    def __init__(self, args: argparse.Namespace, module: Path, peer: Optional[Path],
                 image_dir: Path, test_dir: Path, machine_cache: Path) -> None:
        self.args, self.module, self.peer = args, module, peer
        self.image_dir, self.test_dir = image_dir, test_dir
        self.machine_cache = machine_cache  # XDG_CACHE_HOME of every side but "first"

    def run(self, key: str, run: Path) -> dict[str, Any]:
        """Time side `key` in `run`, then evaluate its export: {"seconds", "accuracy", ...}."""
        with cpu_lock(self.args.lock if self.args.lock_scope == "side" else None):
            seconds, stdout = getattr(self, f"_{key}")(run)
            if key in ("mic", "keras"):
                scale = 255 if key == "mic" else 1  # mic's model takes [0, 1]; the recipe 0-255
                measured = child_accuracy(run / key, self.test_dir, scale)
                precision = "float32"
            else:
                measured = retrainer_accuracy(self.folder(run, key), self.test_dir)
                result = json.loads(stdout)
                precision = result["extractor_precision"]
                measured["parts"] = result["seconds"]
        return {"seconds": seconds, "precision": precision, **measured}

    @staticmethod
    def folder(run: Path, key: str) -> Path:
        """Where side `key` runs: rerun repeats cold's command in cold's folder."""
        return run / ("cold" if key == "rerun" else key)

    def _mic(self, run: Path) -> tuple[float, str]:
        if self.peer is None:
            raise RuntimeError("no make_image_classifier script")
        shutil.rmtree(run / "mic", ignore_errors=True)
        return timed([sys.executable, "-c", PEER_RUNNER, str(self.peer), "--image_dir",
                      str(self.image_dir), "--tfhub_module", str(self.module),
                      "--saved_model_dir", str(run / "mic"), "--train_epochs",
                      str(self.args.epochs)], run, KERAS2_ENV)

    def _keras(self, run: Path) -> tuple[float, str]:
        shutil.rmtree(run / "keras", ignore_errors=True)
        return timed([sys.executable, "-m", "benchmarks.bench_peers", "--recipe",
                      str(self.image_dir), str(self.module), str(run / "keras"), "--epochs",
                      str(self.args.epochs)], run, KERAS2_ENV)

    def _retrain(self, run: Path, key: str, cache: Path, *flags: str,
                 machine_cache: Optional[Path] = None,
                 checkout: Optional[str] = None) -> tuple[float, str]:
        if key != "rerun":  # the export is measured afterwards
            shutil.rmtree(self.folder(run, key), ignore_errors=True)
        env = retrainer_env(machine_cache or self.machine_cache, checkout)
        return timed([sys.executable, "-m", "retrainer.cli.retrain", "--image_dir",
                      str(self.image_dir), "--bottleneck_dir", str(cache), "--json", *flags],
                     self.folder(run, key), env)

    def _cold(self, run: Path) -> tuple[float, str]:
        shutil.rmtree(run / "bottlenecks", ignore_errors=True)
        return self._retrain(run, "cold", run / "bottlenecks")

    def _baseline(self, run: Path) -> tuple[float, str]:
        if not self.args.baseline:
            sys.exit("the baseline side needs --baseline PATH (another checkout of retrainer)")
        shutil.rmtree(run / "bottlenecks_baseline", ignore_errors=True)
        return self._retrain(run, "baseline", run / "bottlenecks_baseline",
                             checkout=self.args.baseline)

    def _warm(self, run: Path) -> tuple[float, str]:
        if not (run / "bottlenecks").is_dir():
            sys.exit(f"warm needs the cold side's cache in {run} first (--sides cold,warm)")
        return self._retrain(run, "warm", run / "bottlenecks")

    def _rerun(self, run: Path) -> tuple[float, str]:
        if not (run / "bottlenecks").is_dir() or not self.folder(run, "rerun").is_dir():
            sys.exit(f"rerun needs the cold side's run in {run} first (--sides cold,rerun)")
        return self._retrain(run, "rerun", run / "bottlenecks")

    def _first(self, run: Path) -> tuple[float, str]:
        for folder in ("bottlenecks_first", "machine_cache_first"):
            shutil.rmtree(run / folder, ignore_errors=True)
        return self._retrain(run, "first", run / "bottlenecks_first",
                             machine_cache=run / "machine_cache_first")

    def _float32(self, run: Path) -> tuple[float, str]:
        shutil.rmtree(run / "bottlenecks_float32", ignore_errors=True)
        return self._retrain(run, "float32", run / "bottlenecks_float32",
                             "--extractor_precision", "float32")


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--peer_script", default=os.environ.get(PEER_ENV),
                        help=f"make_image_classifier.py (default ${PEER_ENV}); without it the "
                             "make_image_classifier side is skipped")
    parser.add_argument("--images", default="1000,10000",
                        help="training set sizes, comma-separated (10 classes)")
    parser.add_argument("--test_images", type=int, default=1000, help="held-out test images")
    parser.add_argument("--rounds", type=int, default=2, help="repetitions of every side")
    parser.add_argument("--first_round", type=int, default=1,
                        help="number of the first round (to add rounds to a --work folder)")
    parser.add_argument("--sides", default=",".join(SIDES),
                        help=f"which sides to run, comma-separated, of {','.join(SIDES)}")
    parser.add_argument("--epochs", type=int, default=5, help="the peers' epochs")
    parser.add_argument("--baseline", help="another checkout of retrainer: its cold run is the "
                                           "'baseline' side (default sides then include it)")
    parser.add_argument("--lock", help="a lock file to flock around each side (its run and "
                                       "its evaluation), or each round (--lock_scope round)")
    parser.add_argument("--lock_scope", choices=("side", "round"), default="side",
                        help="what one hold of --lock covers")
    parser.add_argument("--work", help="folder for data, outputs and results.json (default: a "
                                       "temp folder)")
    parser.add_argument("--recipe", nargs=3, metavar=("IMAGE_DIR", "MODULE", "OUT"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--evaluate", nargs=3, metavar=("MODEL", "TEST_DIR", "SCALE"),
                        help=argparse.SUPPRESS)
    args = cli.parse(parser, {"images": "160", "test_images": 30, "rounds": 1, "epochs": 1,
                              "sides": "mic,keras,cold,warm"})
    if args.recipe:
        keras_recipe(*args.recipe, epochs=args.epochs)
        return
    if args.evaluate:
        saved_model_accuracy(args.evaluate[0], args.evaluate[1], float(args.evaluate[2]))
        return
    if not args.baseline and args.sides == parser.get_default("sides"):
        args.sides = ",".join(key for key in SIDES if key != "baseline")
    unknown = sorted(set(args.sides.split(",")) - set(SIDES))
    if unknown:
        parser.error(f"unknown --sides {unknown}: expected some of {','.join(SIDES)}")
    with tempfile.TemporaryDirectory() as scratch:
        compare(args, Path(args.work or scratch))


def cpu_model() -> str:
    """The CPU's model name, as `lscpu` prints it."""
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def compare(args: argparse.Namespace, work: Path) -> None:
    """Every chosen side on every size, --rounds times; then each size's table."""
    work.mkdir(parents=True, exist_ok=True)
    results_file = work / "results.json"
    results: dict[str, dict[str, dict[str, Any]]] = (
        json.loads(results_file.read_text()) if results_file.is_file() else {})
    peer = Path(args.peer_script).resolve() if args.peer_script else None
    keys = [key for key in SIDES if key in args.sides.split(",")]
    if peer is None and "mic" in keys:
        keys.remove("mic")
        print(f"make_image_classifier skipped: no --peer_script (or ${PEER_ENV})")
    with cpu_lock(args.lock):
        module = write_hub_module(work / "lite0_feature_vector")
        test_dir = fashion_mnist_folder(work / "test", max(1, args.test_images // 10), "t10k")
    print(f"efficientnet_lite0 at {IMAGE_SIZE}x{IMAGE_SIZE} for every side; {args.epochs} epochs "
          f"for the peers; test: {args.test_images} Fashion-MNIST t10k images; {cpu_model()}, "
          f"{machine_line()}", flush=True)
    for size in (int(value) for value in args.images.split(",")):
        with cpu_lock(args.lock):
            image_dir = fashion_mnist_folder(work / f"train_{size}", max(1, size // 10), "train")
        sides = Sides(args, module, peer, image_dir, test_dir, work / "machine_cache")
        if any(key in keys for key in ("baseline", "cold", "warm", "rerun")):
            with cpu_lock(args.lock):  # untimed: what retrainer keeps per machine
                for checkout in ([None, args.baseline] if "baseline" in keys else [None]):
                    compile_retrainer(work / "fill", checkout)
                    fill_machine_cache(image_dir, work / "machine_cache", work / "fill", checkout)
        rounds = results.setdefault(str(size), {})
        for round_ in range(args.first_round, args.first_round + args.rounds):
            run = work / f"runs_{size}_{round_}"
            with cpu_lock(args.lock if args.lock_scope == "round" else None):
                for key in keys:
                    measured = sides.run(key, run)
                    rounds.setdefault(str(round_), {})[SIDES[key]] = measured
                    staging = results_file.with_suffix(".tmp")
                    staging.write_text(json.dumps(results, indent=1))
                    staging.replace(results_file)
                    print(f"  {size} images, round {round_}: {SIDES[key]} "
                          f"{measured['seconds']:.1f} s, test {measured['accuracy'] * 100:.1f} % "
                          f"({machine_line()})", flush=True)
        print_table(size, rounds)


def compile_retrainer(scratch: Path, checkout: Optional[str] = None) -> None:
    """Compile the sources of the retrainer package a retrain process imports (this checkout's,
    or `checkout`'s) to bytecode, as an installed package has them (see the module docstring)."""
    scratch.mkdir(parents=True, exist_ok=True)
    timed([sys.executable, "-c", "import compileall, os, retrainer; "
           "raise SystemExit(not compileall.compile_dir(os.path.dirname(retrainer.__file__), "
           "quiet=1))"],
          scratch, retrainer_env(scratch / "unused_cache", checkout))


def fill_machine_cache(image_dir: Path, machine_cache: Path, scratch: Path,
                       checkout: Optional[str] = None) -> None:
    """One retrain run (of this checkout, or of `checkout`) with `machine_cache` as
    XDG_CACHE_HOME, so that it holds what a machine where that retrainer ran before keeps (the
    int8 engine's converted model, its specs, ...); its outputs are deleted."""
    shutil.rmtree(scratch, ignore_errors=True)
    timed([sys.executable, "-m", "retrainer.cli.retrain", "--image_dir", str(image_dir),
           "--bottleneck_dir", str(scratch / "bottlenecks"), "--json"], scratch,
          retrainer_env(machine_cache, checkout))
    shutil.rmtree(scratch, ignore_errors=True)


def print_table(size: int, rounds: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Per round and side: wall, precision, test accuracy, each peer's wall over the side's;
    then each side's median; then where retrainer's cold seconds went (its `Took` parts)."""
    print(f"\n{size} training images | round | side | precision | wall s | test accuracy (N) | "
          + " | ".join(f"{peer} / side" for peer in PEERS))
    walls: dict[str, list[float]] = {}
    for round_, sides in sorted(rounds.items(), key=lambda item: int(item[0])):
        for name, measured in sides.items():
            walls.setdefault(name, []).append(measured["seconds"])
            ratios = [f"{sides[peer]['seconds'] / measured['seconds']:.1f}x" if peer in sides
                      else "-" for peer in PEERS]
            print(f"  {round_} | {name} | {measured['precision']} | {measured['seconds']:.1f} | "
                  f"{measured['accuracy'] * 100:.1f} % ({measured['count']}) | "
                  + " | ".join(ratios), flush=True)
    print("  median wall s: " + ", ".join(f"{name} {statistics.median(seconds):.1f}"
                                          for name, seconds in walls.items()))
    for round_, sides in sorted(rounds.items(), key=lambda item: int(item[0])):
        for name in ("baseline cold", "retrainer cold", "retrainer warm", "retrainer rerun",
                     "retrainer first run", "retrainer cold float32"):
            if name in sides:
                parts = sides[name]["parts"]
                print(f"  round {round_} {name} Took parts: " + ", ".join(
                    f"{part} {value:.2f}" if isinstance(value, (int, float)) else f"{part} {value}"
                    for part, value in parts.items()))


if __name__ == "__main__":
    main()
