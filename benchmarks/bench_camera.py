"""Camera-size photos: the bottleneck stage and the audit against the limit that decoding sets.

Corpus: --photos JPEGs of 4000x3000 (12 MP, about 2.5 MB each) made by `benchmarks.photos` from
the 12 photographs in Debian's mate-backgrounds (usr/share/backgrounds/mate/nature/*.jpg): random
crops, mirrors, sensor-like noise; one class per source photograph. Comparison: the same pictures
as 224x224 PNGs. Everything below comes from one run, with the default extractor and precision:

1. Decode CPU per image on one thread, for retrainer's path (file read + Pillow with libjpeg's DCT
   scaling + antialiased resize into a batch row) and the peers' (`tf.io.decode_jpeg` at full
   size, then `tf.image.resize`), with Pillow at full size and TensorFlow's own DCT scaling
   (`ratio=8`) for reference.
2. Engine CPU per image (all threads): the engine alone on pre-decoded pixels.
3. The decode-bound limit, N x (decode CPU + engine CPU) / cores, and the stage's wall time
   (compute_bottlenecks into an empty cache, making the audit's signatures as `retrain` does)
   against it; the 224x224 PNGs' stage (vectors only) for comparison.
4. The audit after the stage: cold (as a first run meets it), on cached signatures (findings
   recomputed; best of 5 or --rounds), and on cached findings, per 1,000 images; stage + audit
   against the limit.
5. Cold `retrain` processes (real CLI, each on an empty cache; --retrains of them): each one's
   stage + audit (from --json) / the limit, with the load average after it, then their median
   and spread.

    python -m benchmarks.bench_camera [--photos 200] [--corpus DIR] [--rounds 3] [--retrains 3]
        [--smoke]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from benchmarks import cli
from benchmarks.photos import CAMERA, photo_set
from benchmarks.timing import ENV, best_of, engine_seconds, machine_line, stage_seconds

TARGET_RATIO = 1.3
CACHED_AUDIT_TARGET_S = 0.2  # per 1,000 images


def decode_paths(size: tuple[int, int]) -> dict:
    """name -> function(path) decoding one file to uint8 [H, W, 3] at `size` (height, width)."""
    import tensorflow as tf

    from retrainer.data.decoding import decode_image

    row = np.empty((*size, 3), np.uint8)

    def pillow_full(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            resized = image.convert("RGB").resize(size[::-1], Image.Resampling.BILINEAR)
        return np.asarray(resized)

    def peers(path: Path, ratio: int = 1) -> np.ndarray:
        pixels = tf.io.decode_jpeg(tf.io.read_file(str(path)), channels=3, ratio=ratio)
        return tf.cast(tf.image.resize(pixels, size), tf.uint8).numpy()

    return {
        "retrainer: Pillow, DCT-scaled decode + resize": (
            lambda path: decode_image(path.read_bytes(), size, path, out=row)),
        "Pillow, full-size decode + resize": pillow_full,
        "peers: tf.io.decode_jpeg full size + tf.image.resize": peers,
        "tf.io.decode_jpeg ratio=8 + tf.image.resize": lambda path: peers(path, 8),
    }


def decode_cpu_ms(decode, paths: Sequence, rounds: int) -> float:
    """CPU ms per image of `decode` over `paths`, all threads of the process, best of `rounds`."""
    decode(paths[0])  # warm up (TensorFlow's first op call)
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for path in paths:
            decode(path)
        best = min(best, time.process_time() - started)
    return best / len(paths) * 1e3


def audit_seconds(collection, bottlenecks, cache: Path, rounds: int) -> dict[str, float]:
    """The audit after the stage (seconds): cold (its first call), on cached signatures
    (findings recomputed; the best of `rounds`), on cached findings."""
    from retrainer.audit.run import find_problems
    from retrainer.cache.layout import audit_findings_folder

    def audit(fresh: bool) -> None:
        if fresh:
            shutil.rmtree(audit_findings_folder(cache), ignore_errors=True)
        find_problems(collection, bottlenecks, cache, 0)

    started = time.perf_counter()
    audit(fresh=False)
    cold = time.perf_counter() - started
    return {"cold": cold, "cached signatures": best_of(rounds, lambda: audit(fresh=True)),
            "cached findings": best_of(1, lambda: audit(fresh=False))}


def png_copies(paths: Sequence, out: Path, size: tuple[int, int]) -> list[Path]:
    """The same pictures as PNGs of `size`, in the same class folders."""
    copies = []
    for path in paths:
        copy = out / path.parent.name / f"{path.stem}.png"
        copy.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            image.convert("RGB").resize(size[::-1], Image.Resampling.BILINEAR).save(copy)
        copies.append(copy)
    return copies


def cold_retrain(image_dir: Path, work: Path, steps: int | None) -> dict[str, float]:
    """A real `retrain` process on an empty cache (made, then removed, in `work`); its --json
    "seconds"."""
    out = Path(tempfile.mkdtemp(prefix="retrain_", dir=work))
    command = [sys.executable, "-m", "retrainer.cli.retrain", "--image_dir", str(image_dir),
               "--bottleneck_dir", str(out / "cache"), "--output_graph", str(out / "graph.pb"),
               "--output_labels", str(out / "labels.txt"), "--summaries_dir", str(out / "logs"),
               "--checkpoint_path", str(out / "checkpoint" / "head"),
               "--audit_file", str(out / "audit.json"), "--json"]
    if steps is not None:
        command += ["--how_many_training_steps", str(steps)]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"retrain failed ({done.returncode}):\n{done.stderr[-3000:]}")
    shutil.rmtree(out)
    return json.loads(done.stdout)["seconds"]


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--size", default=f"{CAMERA[0]}x{CAMERA[1]}", help="WIDTHxHEIGHT")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="folder for the photos, reused by later runs (default: a temp one)")
    parser.add_argument("--rounds", type=int, default=3, help="decode timings: best of")
    parser.add_argument("--steps", type=int, default=None, help="training steps of the retrain")
    parser.add_argument("--retrains", type=int, default=3, help="cold retrain processes")
    args = cli.parse(parser, {"photos": 24, "size": "640x480", "rounds": 1, "steps": 10,
                              "corpus": None, "retrains": 1})
    from retrainer.cache.bottlenecks import DEFAULT_BATCH_SIZE, compute_bottlenecks
    from retrainer.cache.layout import audit_findings_folder
    from retrainer.data.decoding import load_image
    from retrainer.data.discovery import discover_images
    from retrainer.engines import AUTO
    from retrainer.engines.factory import create_engine
    from retrainer.extractors import create_extractor
    from retrainer.io.host import usable_cpus

    width, height = (int(side) for side in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="bench_camera_") as scratch:
        work = Path(scratch)
        corpus = args.corpus or work / "photos"
        photo_set(corpus, args.photos, (width, height))
        collection = discover_images(corpus, 10, 10)
        paths = [image.path for image in collection.images]
        megabytes = sum(path.stat().st_size for path in paths) / len(paths) / 1e6
        engine = create_engine(create_extractor("efficientnet_lite0"), AUTO)
        size = engine.spec.input_size
        cores = usable_cpus()
        print(f"{len(paths)} JPEGs of {width}x{height} ({width * height / 1e6:.0f} MP, "
              f"{megabytes:.1f} MB average) from Debian mate-backgrounds' photographs; "
              f"efficientnet_lite0 {engine.precision}; {machine_line()}")

        decodes = {name: decode_cpu_ms(decode, paths, args.rounds)
                   for name, decode in decode_paths(size).items()}
        decode_ms = next(iter(decodes.values()))
        pixels = np.stack([load_image(path, size) for path in paths])
        _, engine_cpu = engine_seconds(engine, pixels, DEFAULT_BATCH_SIZE)
        engine_ms = engine_cpu / len(paths) * 1e3
        limit = len(paths) * (decode_ms + engine_ms) / 1e3 / cores

        pngs = png_copies(paths, work / "png", size)
        png_stage = stage_seconds(engine, pngs, work / "png-cache", DEFAULT_BATCH_SIZE)
        cache = work / "cache"
        started = time.perf_counter()
        bottlenecks = compute_bottlenecks(paths, engine, cache, DEFAULT_BATCH_SIZE,
                                          show_progress=False, signatures=True)
        stage = time.perf_counter() - started
        audit = audit_seconds(collection, bottlenecks, cache, max(args.rounds, 5))
        shutil.rmtree(audit_findings_folder(cache))
        retrains = []
        for _ in range(args.retrains):
            seconds = cold_retrain(corpus, work, args.steps)
            retrains.append((seconds["bottlenecks"], seconds.get("audit", 0.0),
                             os.getloadavg()[0]))

    per_1000 = {state: seconds / len(paths) * 1000 for state, seconds in audit.items()}
    print("\nDecode CPU per image, one thread (all the process's threads counted):")
    print("| decode path | CPU ms/image | x retrainer's |\n|---|---|---|")
    for name, ms in decodes.items():
        print(f"| {name} | {ms:.1f} | {ms / decode_ms:.2f} |")
    print(f"\nEngine CPU {engine_ms:.1f} ms/image ({engine.precision}, all threads); "
          f"decode-bound limit = {len(paths)} x ({decode_ms:.1f} + {engine_ms:.1f}) ms / "
          f"{cores} cores = {limit:.2f} s")
    print("| measured (in process) | seconds | / limit |\n|---|---|---|")
    print(f"| stage, {len(paths)} JPEGs ({len(paths) / stage:.0f} images/s) | {stage:.2f} | "
          f"{stage / limit:.2f} |")
    print(f"| stage, the same pictures as {size[1]}x{size[0]} PNGs "
          f"({len(paths) / png_stage:.0f} images/s) | {png_stage:.2f} | - |")
    for state, seconds in audit.items():
        print(f"| audit, {state} ({per_1000[state]:.2f} s per 1,000 images) | {seconds:.2f} | - |")
    cold = stage + audit["cold"]
    print(f"| stage + cold audit | {cold:.2f} | **{cold / limit:.2f}** "
          f"(target <= {TARGET_RATIO}) |")
    for stage_s, audit_s, load in retrains:
        print(f"| cold `retrain` process: stage {stage_s:.2f} + audit {audit_s:.2f} (load "
              f"{load:.2f}) | {stage_s + audit_s:.2f} | **{(stage_s + audit_s) / limit:.2f}** |")
    ratios = [(stage_s + audit_s) / limit for stage_s, audit_s, _ in retrains]
    print(f"cold `retrain` stage + audit / limit: median {np.median(ratios):.2f}, "
          f"{min(ratios):.2f}-{max(ratios):.2f} over {len(ratios)} processes")
    print(f"audit on cached signatures: {per_1000['cached signatures']:.2f} s per 1,000 images "
          f"(target <= {CACHED_AUDIT_TARGET_S}); {machine_line()}")


if __name__ == "__main__":
    main()
