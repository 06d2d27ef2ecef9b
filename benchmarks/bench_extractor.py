"""Benchmark the built-in extractor on this machine (CPU): images/s, and the rejected formulations.

    python -m benchmarks.bench_extractor [--model efficientnet_lite0] [--seconds 3] [--smoke]

1. The chosen formulation (plain TF ops, batch norm folded into conv kernels + biases, traced in a
   tf.function, no XLA) at batch sizes 1, 16 and 64.
2. The alternatives at batch 16, as ratios of the chosen one's time, timed in turns: unfolded plain
   ops (conv, then batch norm), the same network built from Keras layers, the chosen formulation
   with jit_compile=True (XLA), and eager calls (no tf.function); with each one's largest difference
   from the chosen formulation's vectors.
3. Each precision's engine (retrainer/engines: float32, bfloat16, int8) on real photos
   (`benchmarks.photos`, decoded to 224x224), at the pipeline's batch size, timed in turns, as images/s and as a
   ratio of float32's (target for int8: >= 2x on a CPU with AVX512-VNNI), with each one's relative
   L2 difference from float32's vectors.
Runs in about 2-3 minutes on 2 cores.
"""

from __future__ import annotations

import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import cli  # noqa: E402
from benchmarks.photos import SMALL, photo_set  # noqa: E402
from benchmarks.timing import machine_line  # noqa: E402
from retrainer.extractors import create_extractor  # noqa: E402
from retrainer.extractors._pth import read_state_dict  # noqa: E402
from retrainer.extractors.efficientnet_lite import (  # noqa: E402
    BATCH_NORM_EPSILON,
    INPUT_MEAN,
    INPUT_STD,
    VARIANTS,
    Variant,
    _stages,
    weights_path,
)

BATCH_SIZES = (1, 16, 64)
ALTERNATIVES_BATCH = 16


def _layers(variant: Variant):
    """(kind, weight prefix, bn prefix, stride, residual-start/end markers) in network order."""
    yield "conv", "_conv_stem", "_bn0", 2, None
    index, cin = 0, 32
    for stage in _stages(variant):
        for repeat in range(stage.repeats):
            prefix = f"_blocks.{index}."
            residual = repeat > 0 or (stage.stride == 1 and cin == stage.channels)
            yield "begin", None, None, 1, residual
            if stage.expand_ratio != 1:
                yield "conv", prefix + "_expand_conv", prefix + "_bn0", 1, None
            stride = stage.stride if repeat == 0 else 1
            yield "depthwise", prefix + "_depthwise_conv", prefix + "_bn1", stride, None
            yield "project", prefix + "_project_conv", prefix + "_bn2", 1, None
            yield "end", None, None, 1, residual
            index, cin = index + 1, stage.channels
    yield "conv", "_conv_head", "_bn1", 1, None


def unfolded_extractor(variant: Variant):
    """Plain ops, conv then batch norm from its four statistics (the textbook formulation)."""
    state = read_state_dict(weights_path(variant))
    kernel = {name: tf.Variable(value.transpose(2, 3, 0, 1) if "depthwise" in name else
                                value.transpose(2, 3, 1, 0) if value.ndim == 4 else value)
              for name, value in state.items() if value.dtype == np.float32}
    layers = list(_layers(variant))

    def features(images):
        x, skip = (images - INPUT_MEAN) / INPUT_STD, []
        for kind, weight, bn, stride, residual in layers:
            if kind == "begin":
                skip.append(x)
                continue
            if kind == "end":
                shortcut = skip.pop()
                x = x + shortcut if residual else x
                continue
            w = kernel[weight + ".weight"]
            x = (tf.nn.depthwise_conv2d(x, w, (1, stride, stride, 1), "SAME") if kind == "depthwise"
                 else tf.nn.conv2d(x, w, stride, "SAME"))
            x = tf.nn.batch_normalization(
                x, kernel[bn + ".running_mean"], kernel[bn + ".running_var"], kernel[bn + ".bias"],
                kernel[bn + ".weight"], BATCH_NORM_EPSILON)
            x = x if kind == "project" else tf.nn.relu6(x)
        return tf.reduce_mean(x, axis=(1, 2))

    return features


def keras_extractor(variant: Variant, size: int) -> keras.Model:
    """The same network from Keras layers (Conv2D/DepthwiseConv2D + BatchNormalization + ReLU)."""
    state = read_state_dict(weights_path(variant))
    inputs = keras.Input((size, size, 3))
    x, skip = keras.layers.Rescaling(1 / INPUT_STD, offset=-INPUT_MEAN / INPUT_STD)(inputs), []
    for kind, weight, bn, stride, residual in _layers(variant):
        if kind == "begin":
            skip.append(x)
            continue
        if kind == "end":
            shortcut = skip.pop()
            x = keras.layers.Add()([x, shortcut]) if residual else x
            continue
        w = state[weight + ".weight"]
        if kind == "depthwise":
            conv = keras.layers.DepthwiseConv2D(w.shape[-1], stride, "same", use_bias=False)
            x = conv(x)
            conv.set_weights([w.transpose(2, 3, 0, 1)])
        else:
            conv = keras.layers.Conv2D(w.shape[0], w.shape[-1], stride, "same", use_bias=False)
            x = conv(x)
            conv.set_weights([w.transpose(2, 3, 1, 0)])
        norm = keras.layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON)
        x = norm(x)
        norm.set_weights([state[bn + suffix]
                          for suffix in (".weight", ".bias", ".running_mean", ".running_var")])
        x = x if kind == "project" else keras.layers.ReLU(6.0)(x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))


def call_seconds(function, images: tf.Tensor) -> float:
    start = time.perf_counter()
    np.asarray(function(images))
    return time.perf_counter() - start


def fastest_calls(functions: list, images: tf.Tensor, seconds: float) -> list[float]:
    """Each function's fastest call (seconds) over at least 3 rounds. The functions take turns,
    and the minimum is kept, so load from other processes on a shared machine skews them alike."""
    best = [float("inf")] * len(functions)
    rounds, start = 0, time.perf_counter()
    while rounds < 3 or time.perf_counter() - start < seconds:
        best = [min(old, call_seconds(function, images)) for old, function in zip(best, functions)]
        rounds += 1
    return best


def bench_precisions(extractor, seconds: float) -> None:
    """Part 3: raw images/s of each engine on the same real, pre-decoded photos."""
    from retrainer.cache.bottlenecks import DEFAULT_BATCH_SIZE
    from retrainer.data.decoding import load_image
    from retrainer.engines.cpu import cpu_precisions
    from retrainer.engines.factory import create_engine

    with tempfile.TemporaryDirectory() as scratch:
        photos = [load_image(path, extractor.spec.input_size)
                  for path in photo_set(scratch, 12, SMALL)]
    pixels = np.stack([photos[index % len(photos)] for index in range(DEFAULT_BATCH_SIZE)])
    engines = {}
    for precision in cpu_precisions():  # bfloat16 only where TensorFlow runs it
        started = time.perf_counter()
        engines[precision] = create_engine(extractor, precision)
        engines[precision](pixels)
        print(f"  {precision}: engine ready in {time.perf_counter() - started:.1f} s")
    reference = engines["float32"](pixels)
    best = fastest_calls(list(engines.values()), pixels, seconds)
    print(f"\nengines at batch {DEFAULT_BATCH_SIZE} on real photos, timed in turns:")
    for (precision, engine), call in zip(engines.items(), best):
        error = np.linalg.norm(engine(pixels) - reference) / np.linalg.norm(reference)
        print(f"  {precision:8s} {DEFAULT_BATCH_SIZE / call:7.1f} images/s = "
              f"{best[0] / call:4.2f}x float32   (relative L2 difference {error:.3f})")


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--model", default="efficientnet_lite0", choices=sorted(VARIANTS))
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measurement")
    parser.add_argument("--precisions-only", action="store_true", help="only part 3")
    args = cli.parse(parser, {"seconds": 0.0})
    variant = VARIANTS[args.model]
    start = time.perf_counter()
    extractor = create_extractor(args.model)
    size = extractor.spec.input_size[0]
    print(f"{args.model}: weights loaded and folded in {time.perf_counter() - start:.2f} s; "
          f"{machine_line()}, TensorFlow {tf.__version__}")
    if args.precisions_only:
        bench_precisions(extractor, args.seconds)
        return
    rng = np.random.default_rng(0)
    batches = {n: tf.constant(rng.random((n, size, size, 3), dtype=np.float32))
               for n in BATCH_SIZES}

    chosen = tf.function(extractor.__call__)
    print("\nchosen formulation (folded batch norm, plain ops, tf.function, no XLA), fastest call:")
    for n, images in batches.items():
        first = call_seconds(chosen, images)
        (best,) = fastest_calls([chosen], images, args.seconds)
        print(f"  batch {n:3d}: {n / best:7.1f} images/s   (first call, tracing: {first:.2f} s)")

    images = batches[ALTERNATIVES_BATCH]
    reference = chosen(images).numpy()
    model = keras_extractor(variant, size)
    alternatives = {
        "unfolded batch norm, plain ops": tf.function(unfolded_extractor(variant)),
        "Keras layers (Conv2D/BatchNormalization)": tf.function(lambda x: model(x, training=False)),
        "folded + jit_compile=True (XLA)": tf.function(extractor.__call__, jit_compile=True),
        "folded, eager (no tf.function)": extractor.__call__,
    }
    print(f"\nalternatives at batch {ALTERNATIVES_BATCH}: fastest call relative to the chosen "
          "formulation's, timed in turns (>1 = slower):")
    for label, function in alternatives.items():
        first = call_seconds(function, images)
        difference = np.abs(np.asarray(function(images)) - reference).max()
        best_chosen, best = fastest_calls([chosen, function], images, args.seconds)
        rate = ALTERNATIVES_BATCH / best
        print(f"  {label:42s} {best / best_chosen:5.2f}x  ({rate:6.1f} images/s, "
              f"first call {first:.1f} s, max |difference| {difference:.1e})")
    print("\nprecisions:")
    bench_precisions(extractor, args.seconds)


if __name__ == "__main__":
    main()
