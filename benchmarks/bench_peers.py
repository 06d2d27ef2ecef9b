"""Benchmark retrainer against its peers on the same images, every side in one run, repeated:

- make_image_classifier, TensorFlow Hub's last version (removed from tensorflow/hub in 2023; not
  part of this repository): pass the path of its `make_image_classifier.py` with --peer_script
  (its `make_image_classifier_lib.py` beside it). It runs with its default flags (5 epochs, batch
  32, SGD with momentum, a 20 % validation split), as a real process;
- the Keras recipe a user would write, defined in this file: `image_dataset_from_directory` (80/20
  split, cached, prefetched), `Rescaling`, the extractor as a `hub.KerasLayer`, `Dense` with
  softmax, Adam, 5 epochs, `tf.saved_model.save`;
- retrainer with default flags, cold (an empty --bottleneck_dir) and warm (the same run again).

Both peers get the same EfficientNet-Lite0 weights retrainer uses: no model hub is reachable, so
the benchmark writes retrainer's own Lite0 as a TF2 SavedModel (the image feature vector
interface: float32 [N, 224, 224, 3] in [0, 1] -> [N, 1280]) and hands it to them as the module.

Every figure is the wall time of a whole process, start-up and `import tensorflow` included, on N
real Fashion-MNIST training images (default 1,000 and 10,000). Test accuracy is measured on what
each side exported, on the same held-out images (Fashion-MNIST's t10k set, which no side trains
on): retrainer's frozen graph through `label-image`, the peers' SavedModels through their serving
signature. The peers' times vary from run to run, so each round runs every side back to back and
the ratios are each round's (peer / retrainer); --lock takes the shared CPU lock around each timed
process, so that a long peer run never holds it for the whole benchmark.

    python -m benchmarks.bench_peers --peer_script PATH [--images 1000,10000] [--rounds 2]
        [--lock /work/team/cpu.lock] [--work DIR] [--smoke]
"""

from __future__ import annotations

import argparse
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


def retrainer_accuracy(run_dir: Path, test_dir: Path) -> dict[str, float]:
    """Accuracy of retrainer's exported frozen graph on `test_dir`, through `label-image`."""
    graph = run_dir / "retrain_output" / "output_graph.pb"
    labels = (run_dir / "retrain_output" / "output_labels.txt").read_text().splitlines()
    folders = sorted(path.name for path in test_dir.iterdir() if path.is_dir())
    if len(labels) != len(folders):
        sys.exit(f"{len(labels)} labels for {len(folders)} test folders")
    done = subprocess.run(
        [sys.executable, "-m", "retrainer.cli.label_image", "--graph", str(graph), "--json",
         "--top_k", "1", str(test_dir)], env=ENV, capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    correct = sum(folders[labels.index(row["label"])] == Path(row["path"]).parent.name
                  for row in rows)
    return {"accuracy": correct / len(rows), "count": len(rows)}


def child_accuracy(model_dir: Path, test_dir: Path, scale: float) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_peers", "--evaluate", str(model_dir),
         str(test_dir), str(scale)], env=KERAS2_ENV, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"evaluating {model_dir} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def timed(command: list[str], cwd: Path, env: dict[str, str], lock: Optional[str]) -> float:
    """Wall seconds of one process (under the CPU lock when given); exits if it fails."""
    with cpu_lock(lock):
        started = time.perf_counter()
        done = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[:6])} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--peer_script", default=os.environ.get(PEER_ENV),
                        help=f"make_image_classifier.py (default ${PEER_ENV}); without it the "
                             "make_image_classifier side is skipped")
    parser.add_argument("--images", default="1000,10000",
                        help="training set sizes, comma-separated (10 classes)")
    parser.add_argument("--test_images", type=int, default=1000, help="held-out test images")
    parser.add_argument("--rounds", type=int, default=2, help="repetitions of every side")
    parser.add_argument("--epochs", type=int, default=5, help="the peers' epochs")
    parser.add_argument("--lock", help="a lock file to flock around each timed process")
    parser.add_argument("--work", help="folder for data and outputs (default: a temp folder)")
    parser.add_argument("--recipe", nargs=3, metavar=("IMAGE_DIR", "MODULE", "OUT"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--evaluate", nargs=3, metavar=("MODEL", "TEST_DIR", "SCALE"),
                        help=argparse.SUPPRESS)
    args = cli.parse(parser, {"images": "160", "test_images": 30, "rounds": 1, "epochs": 1})
    if args.recipe:
        keras_recipe(*args.recipe, epochs=args.epochs)
        return
    if args.evaluate:
        saved_model_accuracy(args.evaluate[0], args.evaluate[1], float(args.evaluate[2]))
        return
    with tempfile.TemporaryDirectory() as scratch:
        compare(args, Path(args.work or scratch))


def compare(args: argparse.Namespace, work: Path) -> None:
    """Every side on every size, --rounds times; then the table."""
    work.mkdir(parents=True, exist_ok=True)
    module = write_hub_module(work / "lite0_feature_vector")
    test_dir = fashion_mnist_folder(work / "test", max(1, args.test_images // 10), "t10k")
    peer = Path(args.peer_script).resolve() if args.peer_script else None
    print(f"efficientnet_lite0 for every side; {args.epochs} epochs for the peers; test: "
          f"{args.test_images} Fashion-MNIST t10k images; {machine_line()}")
    if peer is None:
        print(f"make_image_classifier skipped: no --peer_script (or ${PEER_ENV})")
    for size in (int(value) for value in args.images.split(",")):
        image_dir = fashion_mnist_folder(work / f"train_{size}", max(1, size // 10), "train")
        times: dict[str, list[float]] = {}
        accuracy: dict[str, dict[str, float]] = {}
        for round_ in range(args.rounds):
            run = work / f"runs_{size}_{round_}"
            run.mkdir(exist_ok=True)
            sides = []
            if peer is not None:
                sides.append(("make_image_classifier", [
                    sys.executable, "-c", PEER_RUNNER, str(peer), "--image_dir", str(image_dir),
                    "--tfhub_module", str(module), "--saved_model_dir", str(run / "peer"),
                    "--train_epochs", str(args.epochs)], KERAS2_ENV))
            sides.append(("keras recipe", [
                sys.executable, "-m", "benchmarks.bench_peers", "--recipe", str(image_dir),
                str(module), str(run / "recipe"), "--epochs", str(args.epochs)], KERAS2_ENV))
            retrain = [sys.executable, "-m", "retrainer.cli.retrain", "--image_dir",
                       str(image_dir), "--bottleneck_dir", str(run / "bottlenecks")]
            sides += [("retrainer cold", retrain, ENV), ("retrainer warm", retrain, ENV)]
            for name, command, env in sides:
                seconds = timed(command, run, env, args.lock)
                times.setdefault(name, []).append(seconds)
                print(f"  {size} images, round {round_ + 1}: {name} {seconds:.1f} s "
                      f"({machine_line()})", flush=True)
            if round_ == 0:  # what each side exported, on the same held-out images
                if peer is not None:
                    accuracy["make_image_classifier"] = child_accuracy(run / "peer", test_dir, 255)
                accuracy["keras recipe"] = child_accuracy(run / "recipe", test_dir, 1)
                accuracy["retrainer cold"] = accuracy["retrainer warm"] = \
                    retrainer_accuracy(run, test_dir)
        print_table(size, times, accuracy)


def print_table(size: int, times: dict[str, list[float]],
                accuracy: dict[str, dict[str, float]]) -> None:
    """Per side: each round's wall, the test accuracy, and each peer's time over it per round."""
    peers = [name for name in ("make_image_classifier", "keras recipe") if name in times]
    print(f"\n{size} training images | wall s per round | median | test accuracy (N) | "
          + " | ".join(f"{peer} / side per round" for peer in peers))
    for name, seconds in times.items():
        ratios = [" ".join(f"{peer_s / side_s:.1f}x" for peer_s, side_s
                           in zip(times[peer], seconds)) for peer in peers]
        right = accuracy[name]
        print(f"  {name:22s} | {' '.join(f'{value:.1f}' for value in seconds)} | "
              f"{statistics.median(seconds):.1f} | {right['accuracy'] * 100:.1f} % "
              f"({right['count']}) | " + " | ".join(ratios), flush=True)


if __name__ == "__main__":
    main()
