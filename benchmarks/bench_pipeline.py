"""Benchmark the retrain pipeline with the real efficientnet_lite0, all in one run:

(a) extraction stage (read + hash + parallel decode + extractor + cache writes, from files) in
    images/s, divided by the raw engine's images/s on the same images pre-decoded in memory
    (target >= 0.95), for each --precisions engine (float32, bfloat16, int8: retrainer/engines); as measured, and in steady state (without the stage's one-time cost -- trace,
    first batch -- measured on a one-batch run). Also the ceiling the decode sets on this
    machine, whose cores the engine already fills: engine CPU / (engine CPU + decode CPU), both
    per image, measured in the same run (decode: read + decode into a batch row, one thread). On Fashion-MNIST PNGs, and on 480x360 JPEG
    photos (decoding costs more). The machine is shared, so the two are measured alternately
    --rounds times: the best of each, and the median of each round's back-to-back ratio (which
    a host whose speed drifts between rounds biases less than the two bests);
(b) cold `retrain` (a real process, empty bottleneck cache) on N Fashion-MNIST images, against
    the raw extraction time of those images;
(c) warm rerun (every vector cached), TensorFlow start-up included (target <= 10 s), against a bare
    `python -c "import tensorflow"`.

    python -m benchmarks.bench_pipeline [--images 1000] [--photos 300] [--rounds 3] [--smoke]

Photos: `benchmarks.photos.photo_set` at 480x360 (crops of Debian's mate-backgrounds photographs).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import cli
from benchmarks.data import fashion_mnist_folder
from benchmarks.photos import SMALL, photo_set
from benchmarks.timing import engine_seconds, machine_line, stage_seconds, timed_process

STAGE_TARGET = 0.95
WARM_TARGET_SECONDS = 10.0


def decode_cpu_seconds(paths: list[Path], input_size: tuple[int, int]) -> float:
    """CPU seconds to read and decode `paths` into a batch's rows on one thread (best of 3)."""
    from retrainer.data.decoding import decode_image

    row = np.empty((*input_size, 3), np.uint8)
    best = float("inf")
    for _ in range(3):
        started = time.thread_time()
        for path in paths:
            decode_image(path.read_bytes(), input_size, path, out=row)
        best = min(best, time.thread_time() - started)
    return best


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--images", type=int, default=1000, help="Fashion-MNIST images (10 classes)")
    parser.add_argument("--photos", type=int, default=300, help="JPEG photos for (a); 0 to skip")
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurements for (a)")
    from retrainer.engines.cpu import cpu_precisions

    parser.add_argument("--precisions", default=",".join(cpu_precisions()),
                        help="engines for (a), comma-separated (default: those this CPU runs)")
    args = cli.parse(parser, {"images": 20, "photos": 8, "rounds": 1,
                              "precisions": cpu_precisions()[-1]})

    from retrainer.cache.bottlenecks import DEFAULT_BATCH_SIZE
    from retrainer.engines.factory import create_engine
    from retrainer.extractors import create_extractor

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        image_dir = fashion_mnist_folder(work / "fashion", args.images // 10)
        fashion = sorted(image_dir.rglob("*.png"))
        extractor = create_extractor("efficientnet_lite0")
        print(f"efficientnet_lite0, extraction batch {DEFAULT_BATCH_SIZE}, {machine_line()}")

        datasets = [("Fashion-MNIST 28x28 PNG", fashion)]
        if args.photos:
            datasets.append(("photos 480x360 JPEG", photo_set(work / "photos", args.photos, SMALL)))
        raw_fashion = None
        engines = {precision: create_engine(extractor, precision)
                   for precision in args.precisions.split(",")}
        from retrainer.data.decoding import load_image

        for index, (name, paths) in enumerate(datasets):
            pixels = np.stack([load_image(path, extractor.spec.input_size) for path in paths])
            decode = decode_cpu_seconds(paths, extractor.spec.input_size)
            for precision, engine in engines.items():
                raw = stage = one_batch = raw_cpu = float("inf")
                paired = []  # each round's ratio: raw and stage measured back to back
                for round_ in range(args.rounds):
                    raw_round, raw_cpu_round = engine_seconds(engine, pixels, DEFAULT_BATCH_SIZE)
                    raw_cpu = min(raw_cpu, raw_cpu_round)
                    cache = work / f"cache_{index}_{precision}_{round_}"
                    stage_round = stage_seconds(engine, paths, cache, DEFAULT_BATCH_SIZE)
                    raw, stage = min(raw, raw_round), min(stage, stage_round)
                    paired.append(raw_round / stage_round)
                    one_batch = min(one_batch, stage_seconds(
                        engine, paths[:DEFAULT_BATCH_SIZE], cache.with_name(cache.name + "_one"),
                        DEFAULT_BATCH_SIZE))
                # What a run pays once, whatever its size: trace, first batch's decode, start-up.
                fixed = max(0.0, one_batch - raw * DEFAULT_BATCH_SIZE / len(paths))
                if precision == "float32":
                    raw_fashion = raw_fashion or raw
                print(f"(a) {name}, {len(paths)} images, {precision:8s}: stage "
                      f"{len(paths) / stage:6.1f} img/s, raw engine {len(paths) / raw:6.1f} img/s "
                      f"-> ratio {raw / stage:.2f}; steady state, without the stage's one-time "
                      f"{fixed:.2f} s: {raw / (stage - fixed):.2f}; median of the rounds' paired "
                      f"ratios {statistics.median(paired):.2f} (target >= {STAGE_TARGET}); "
                      f"decode ceiling {raw_cpu / (raw_cpu + decode):.2f} (engine "
                      f"{raw_cpu / len(paths) * 1e3:.2f}, decode {decode / len(paths) * 1e3:.2f} "
                      f"CPU ms per image)", flush=True)

        import_seconds = timed_process([sys.executable, "-c", "import tensorflow"], work)
        command = [sys.executable, "-m", "retrainer.cli.retrain", "--image_dir", str(image_dir),
                   "--bottleneck_dir", str(work / "cli_cache"), "--quiet"]
        if args.smoke:
            command += ["--how_many_training_steps", "10"]
        cold = timed_process(command, work)
        warm = timed_process(command, work)
        if raw_fashion is not None:
            print(f"(b) cold retrain, {len(fashion)} images, 4000 steps: {cold:.1f} s wall = "
                  f"{cold / raw_fashion:.2f} x the raw float32 extraction time "
                  f"({raw_fashion:.1f} s)")
        print(f"(c) warm rerun (all cached): {warm:.1f} s wall (target <= {WARM_TARGET_SECONDS:g} s) "
              f"= {warm / import_seconds:.2f} x a bare `import tensorflow` ({import_seconds:.1f} s)")


if __name__ == "__main__":
    main()
