"""Benchmark the extraction engines where TensorFlow sees a GPU (scripts/bench_gpu.sh installs the
GPU build and runs this): each precision's engine alone on pre-decoded images and the whole
bottleneck stage from files, at batch 64 and 256, against the host's decode alone (the ceiling a
GPU meets first: decoding stays on the CPU). Images: real Fashion-MNIST PNGs and 480x360 JPEG
photos (Debian mate-backgrounds). Without a GPU it runs on the CPU (its figures are then the
CPU's; the smoke mode checks it still runs).

    python -m benchmarks.bench_gpu [--images 5000] [--smoke]
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import cli
from benchmarks.data import fashion_mnist_files
from benchmarks.photos import SMALL, photo_set
from benchmarks.timing import engine_seconds, machine_line, stage_seconds


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--images", type=int, default=5000, help="4/5 photos, 1/5 PNGs")
    parser.add_argument("--batches", default="64,256")
    args = cli.parse(parser, {"images": 40, "batches": "8"})

    import tensorflow as tf

    from retrainer.data.batches import decoded_images
    from retrainer.data.decoding import load_image
    from retrainer.engines import PRECISIONS
    from retrainer.engines.cpu import cpu_precisions
    from retrainer.engines.factory import create_engine
    from retrainer.extractors import create_extractor

    gpus = tf.config.list_physical_devices("GPU")
    print(f"GPUs: {gpus or 'none (CPU figures)'}; {machine_line()}", flush=True)
    # On the CPU, bfloat16 only where TensorFlow applies its rewrite (AVX-512)
    precisions = PRECISIONS if gpus else cpu_precisions()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        paths = fashion_mnist_files(work / "fashion", max(1, args.images // 50))
        paths += photo_set(work / "photos", args.images - len(paths), SMALL)
        extractor = create_extractor("efficientnet_lite0")
        pixels = np.stack([load_image(path, extractor.spec.input_size) for path in paths])
        started = time.perf_counter()
        for _ in decoded_images(paths, extractor.spec.input_size, 256):
            pass
        decode = len(paths) / (time.perf_counter() - started)
        print(f"decode alone: {decode:.0f} images/s on {os.cpu_count()} CPUs", flush=True)
        for precision in precisions:
            engine = create_engine(extractor, precision)
            for batch in (int(value) for value in args.batches.split(",")):
                raw, _ = engine_seconds(engine, pixels, batch)
                stage = stage_seconds(engine, paths, work / f"cache-{precision}-{batch}", batch)
                print(f"{precision:8s} batch {batch:3d}: raw {len(paths) / raw:7.0f} images/s, "
                      f"stage {len(paths) / stage:7.0f} images/s, stage/raw {raw / stage:.2f}, "
                      f"stage/decode {len(paths) / stage / decode:.2f}", flush=True)


if __name__ == "__main__":
    main()
