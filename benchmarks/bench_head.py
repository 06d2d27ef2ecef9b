"""Benchmark head training on cached vectors: retrain.py's SGD steps, Keras `fit`, the convex fit.

On N vectors of D dimensions in C classes (class-clustered Gaussians with EfficientNet-Lite0's
shape; timing does not depend on the values), each timed in this process, best of --rounds:
- `loop`: retrainer's SGD loop with retrain.py's defaults (4,000 steps, batches of 100,
  an evaluation every 10 steps, TensorBoard summaries on), target <= 0.8 s on 2 cores;
- `keras_fit`: the same steps, batches and evaluations through Keras `Model.fit` with its
  EarlyStopping and TensorBoard callbacks, the alternative the loop was measured against;
- `convex`: the default solver (full-batch L-BFGS along the validation-chosen L2 path).
Prints each time and its ratio to `keras_fit` measured in the same run. Each round is a whole
`train_head` call, tracing included, as in a `retrain` run.

    python -m benchmarks.bench_head [--vectors 1000] [--steps 4000] [--rounds 3] [--smoke]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks import cli
from benchmarks.timing import machine_line

LOOP_TARGET_SECONDS = 0.8


def synthetic_vectors(count: int, dims: int, classes: int, seed: int = 0):
    """(features float32 [count, dims], labels int64 [count]): one Gaussian cluster per class."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dims)).astype(np.float32)
    labels = rng.integers(0, classes, count).astype(np.int64)
    features = centres[labels] + 2.0 * rng.normal(size=(count, dims)).astype(np.float32)
    return np.maximum(features, 0.0), labels  # non-negative, as pooled ReLU features are


def run_loop(train, validation, classes: int, steps: int, logs: Path) -> float:
    from retrainer.training.head import train_head
    from retrainer.training.head_types import FeatureSet, TrainingConfig

    config = TrainingConfig(steps=steps, learning_rate=0.01, train_batch_size=100,
                            validation_batch_size=100, eval_step_interval=10, seed=0,
                            summaries_dir=logs)
    result = train_head(FeatureSet(*train), FeatureSet(*validation), classes, config)
    return result.history[-1].validation_accuracy


def run_keras_fit(train, validation, classes: int, steps: int, logs: Path) -> float:
    """retrain.py's schedule in Keras: epochs of 10 sampled batches, one validation batch each."""
    import keras
    import tensorflow as tf

    interval, batch = 10, 100
    rng = np.random.default_rng(0)

    def batches(features, labels, count):
        rows = rng.integers(0, len(labels), (count, batch))
        return tf.data.Dataset.from_tensor_slices((features[rows], labels[rows]))

    model = keras.Sequential([keras.Input((train[0].shape[1],)), keras.layers.Dense(
        classes, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.001))])
    model.compile(optimizer=keras.optimizers.SGD(0.01), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=interval)
    history = model.fit(
        batches(*train, steps), epochs=steps // interval, steps_per_epoch=interval,
        validation_data=batches(*validation, steps // interval).repeat(), validation_steps=1,
        callbacks=[keras.callbacks.EarlyStopping(patience=steps, restore_best_weights=True),
                   keras.callbacks.TensorBoard(str(logs), histogram_freq=1)], verbose=0)
    return history.history["val_accuracy"][-1]


def run_convex(train, validation, classes: int, steps: int, logs: Path) -> float:
    from retrainer.training.convex import fit_head

    fit = fit_head(*train, *validation, classes)
    return fit.path[fit.chosen].validation_accuracy


VARIANTS: dict[str, Callable[..., float]] = {
    "keras_fit": run_keras_fit, "loop": run_loop, "convex": run_convex}


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--vectors", type=int, default=1000)
    parser.add_argument("--dims", type=int, default=1280)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = cli.parse(parser, {"vectors": 200, "dims": 32, "steps": 40, "rounds": 1})
    features, labels = synthetic_vectors(args.vectors, args.dims, args.classes)
    cut = int(0.9 * len(labels))
    train, validation = (features[:cut], labels[:cut]), (features[cut:], labels[cut:])
    print(machine_line())
    print(f"{args.vectors} vectors x {args.dims} dims, {args.classes} classes, "
          f"{args.steps} SGD steps, best of {args.rounds}")
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as work:
        for name in args.variants.split(","):
            times = []
            for round_index in range(args.rounds):
                started = time.perf_counter()
                accuracy = VARIANTS[name](train, validation, args.classes, args.steps,
                                          Path(work) / f"{name}{round_index}")
                times.append(time.perf_counter() - started)
            seconds[name] = min(times)
            print(f"  {name:<10} {seconds[name]:7.3f} s  (rounds: "
                  f"{', '.join(f'{t:.3f}' for t in times)}; validation accuracy {accuracy:.3f})")
    if "keras_fit" in seconds:
        for name, value in seconds.items():
            print(f"  {name:<10} / keras_fit = {value / seconds['keras_fit']:.2f}")
    if "loop" in seconds and not args.smoke:
        verdict = "meets" if seconds["loop"] <= LOOP_TARGET_SECONDS else "misses"
        print(f"  loop {seconds['loop']:.3f} s {verdict} the {LOOP_TARGET_SECONDS} s target")


if __name__ == "__main__":
    main()
