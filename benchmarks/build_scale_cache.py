"""Build the simulated large dataset `bench_scale` runs: image files plus a warm bottleneck cache.

Extraction is the one stage whose cost per image is known (images/s, `bench_pipeline`); every
stage after it is what this data exercises. So the vectors are simulated from real ones, and the
files are real but tiny:

- real vectors: every Fashion-MNIST image of --fashion_mnist (default: the 70,000 in the team's
  shared folder, whose cache is reused) and N real photo crops (`benchmarks.photos.photo_set` at
  480x360, from Debian's mate-backgrounds), at the default extractor and precision;
- 1,000 classes: spherical k-means of those vectors (Fashion-MNIST and photos clustered apart, in
  proportion), so a class is a region of real vectors, not a random label;
- each simulated vector: a random mix a*x + (1-a)*y of two real members of its class, plus
  Gaussian noise (--noise x each dimension's standard deviation), clipped at 0 like ReLU6
  outputs;
- each image: a unique 8x8 RGB PNG of random pixels, so its SHA-256 (the cache key) is its own;
  its vector is stored under that key with retrainer's own cache writer (`BottleneckCache`), and
  its audit signature (thumbnail and perceptual hash, from the decoder's own pass) with
  `SignatureCache`, as the bottleneck stage would: a warm run's audit reads them, as it would
  after a real extraction.

Layout of --out: `images/<class>/<i>.png` (all), `images_<k>/`: the first k files of each class
as hard links (one per --subsets value), `bottlenecks/` (the --bottleneck_dir of every subset),
`manifest.json`. Built under `<out>.partial` and renamed when complete. Several minutes of CPU
and ~10 GB of disk at 1,000,000 images: run it under the CPU lock.

    python -m benchmarks.build_scale_cache --out /work/team/data/scale_1m
        [--classes 1000] [--per_class 1000] [--subsets 10,100] [--smoke]
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks import cli
from benchmarks.data import fashion_mnist_folder
from benchmarks.photos import SMALL, photo_set

SHARED_FASHION_MNIST = Path("/work/team/data/fashion_mnist_70k")
PNG_SIDE = 8
KMEANS_ROUNDS = 5
WRITE_BATCH = 32  # entries per cache pack, as the bottleneck stage writes them


def real_vectors(args, work: Path, engine) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [M, D] real vectors, bool [M] is-a-photo) from Fashion-MNIST and photos."""
    from retrainer.cache.bottlenecks import compute_bottlenecks

    if args.fashion_mnist:
        fashion = Path(args.fashion_mnist)
        fashion_images, fashion_cache = fashion / "images", fashion / "bottlenecks"
    else:
        fashion_images = fashion_mnist_folder(work / "fashion", args.fashion_per_class)
        fashion_cache = work / "real_cache"
    groups = []
    fashion = sorted(Path(fashion_images).rglob("*.png"))
    photos = photo_set(work / "photos", args.photos, SMALL)
    for name, paths, cache in (("Fashion-MNIST", fashion, fashion_cache),
                               ("photo", photos, work / "real_cache")):
        found = compute_bottlenecks(paths, engine, cache, show_progress=False)
        groups.append(found.vectors[found.ok])
        print(f"real vectors: {len(groups[-1])} {name} ({found.computed} computed)", flush=True)
    return np.concatenate(groups), np.repeat([False, True], [len(group) for group in groups])


def spherical_kmeans(vectors: np.ndarray, clusters: int, rng: np.random.Generator) -> np.ndarray:
    """int64 [M] cluster of each row (cosine k-means, KMEANS_ROUNDS rounds, empty ones reseeded)."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    centres = unit[rng.choice(len(unit), clusters, replace=False)]
    for _ in range(KMEANS_ROUNDS):
        assignment = np.concatenate([np.argmax(unit[start:start + 8192] @ centres.T, axis=1)
                                     for start in range(0, len(unit), 8192)])
        for cluster in range(clusters):
            members = unit[assignment == cluster]
            centre = members.sum(axis=0) if len(members) else unit[rng.integers(len(unit))]
            centres[cluster] = centre / max(np.linalg.norm(centre), 1e-12)
    return assignment


def class_pools(vectors: np.ndarray, photo: np.ndarray, classes: int,
                rng: np.random.Generator) -> list[np.ndarray]:
    """Per simulated class, the rows of `vectors` it mixes: clusters of photos and of the rest,
    in proportion to their numbers (at least one photo class)."""
    photo_classes = max(1, round(classes * photo.mean()))
    pools = []
    for rows, count in ((np.flatnonzero(~photo), classes - photo_classes),
                        (np.flatnonzero(photo), photo_classes)):
        assignment = spherical_kmeans(vectors[rows], count, rng)
        pools += [rows[assignment == cluster] for cluster in range(count)]
    return [pool if len(pool) else rng.integers(len(vectors), size=1) for pool in pools]


def png_bytes(rng: np.random.Generator) -> bytes:
    """A unique tiny image: 8x8 RGB random pixels as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (PNG_SIDE, PNG_SIDE, 3), np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def signature(data: bytes, input_size: tuple[int, int]) -> tuple[np.ndarray, np.uint64]:
    """The audit signature the bottleneck stage makes of image bytes (its decoder's pass)."""
    from retrainer.data.decoding import decode_image
    from retrainer.data.signatures import DECODE_SIZE, signature_of_pixels

    thumbnail = np.zeros((*DECODE_SIZE, 3), np.uint8)
    decode_image(data, input_size, thumbnail=thumbnail)
    return signature_of_pixels(thumbnail)


def build(args, out: Path, work: Path) -> dict:
    from retrainer.cache.entries import BottleneckCache
    from retrainer.cache.signatures import SignatureCache
    from retrainer.data.batches import content_digest
    from retrainer.data.signatures import Signatures
    from retrainer.engines.factory import create_engine
    from retrainer.extractors import create_extractor

    engine = create_engine(create_extractor("efficientnet_lite0"), "auto")
    rng = np.random.default_rng(args.seed)
    vectors, photo = real_vectors(args, work, engine)
    pools = class_pools(vectors, photo, args.classes, rng)
    noise = (args.noise * vectors.std(axis=0)).astype(np.float32)
    cache = BottleneckCache(out / "bottlenecks", engine.spec)
    total = args.classes * args.per_class
    # Signatures are stored once at the end: each store rewrites every shard it touches.
    digests, signatures = [], Signatures.empty(total)
    started = time.perf_counter()
    for cls, pool in enumerate(pools):
        folder = out / "images" / f"c{cls:04d}"
        folder.mkdir(parents=True)
        first, second = rng.choice(pool, (2, args.per_class))
        mix = rng.random((args.per_class, 1), np.float32)
        simulated = mix * vectors[first] + (1 - mix) * vectors[second]
        simulated += rng.standard_normal(simulated.shape, np.float32) * noise
        np.maximum(simulated, 0, out=simulated)
        entries = []
        for index in range(args.per_class):
            data = png_bytes(rng)
            (folder / f"{index:06d}.png").write_bytes(data)
            entries.append((content_digest(data), simulated[index]))
            digests.append(entries[-1][0])
            row = cls * args.per_class + index
            signatures.thumbnails[row], signatures.hashes[row] = signature(
                data, engine.spec.input_size)
        for start in range(0, len(entries), WRITE_BATCH):
            cache.store_all(entries[start:start + WRITE_BATCH])
        for per_class in args.subset_sizes:
            subset = out / f"images_{per_class}" / folder.name
            subset.mkdir(parents=True)
            for index in range(min(per_class, args.per_class)):
                os.link(folder / f"{index:06d}.png", subset / f"{index:06d}.png")
        if cls % 100 == 99:
            print(f"  {cls + 1} classes written ({time.perf_counter() - started:.0f} s)",
                  flush=True)
    SignatureCache(out / "bottlenecks", engine.spec.input_size).store(digests, signatures)
    return {"classes": args.classes, "per_class": args.per_class,
            "subsets": {f"images_{k}": k * args.classes for k in args.subset_sizes},
            "images": args.classes * args.per_class, "extractor_id": engine.spec.id,
            "real_vectors": int(len(vectors)), "real_photo_vectors": int(photo.sum()),
            "noise": args.noise, "seed": args.seed}


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--out", required=True, help="the dataset folder to create")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--per_class", type=int, default=1000)
    parser.add_argument("--subsets", default="10,100", help="images per class of each subset")
    parser.add_argument("--fashion_mnist", default=str(SHARED_FASHION_MNIST)
                        if SHARED_FASHION_MNIST.is_dir() else "",
                        help="a folder with images/ and bottlenecks/ (build_fashion_mnist_70k); "
                             "'' = build --fashion_per_class images per class here")
    parser.add_argument("--fashion_per_class", type=int, default=1000)
    parser.add_argument("--photos", type=int, default=1200, help="real photo crops (480x360)")
    parser.add_argument("--noise", type=float, default=0.25,
                        help="noise standard deviation, in each dimension's standard deviation")
    parser.add_argument("--seed", type=int, default=0)
    args = cli.parse(parser, {"classes": 20, "per_class": 20, "subsets": "2,5",
                              "fashion_mnist": "", "fashion_per_class": 10, "photos": 24})
    args.subset_sizes = [int(value) for value in args.subsets.split(",") if value]
    out = Path(args.out).resolve()
    if (out / "manifest.json").is_file():
        print(f"{out} is already built: {(out / 'manifest.json').read_text()}")
        return
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    started = time.perf_counter()
    work = out.with_name(out.name + ".work")  # real vectors' images and cache: deleted after
    manifest = build(args, partial, work)
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    partial.rename(out)
    shutil.rmtree(work, ignore_errors=True)
    print(f"built {out} in {time.perf_counter() - started:.0f} s: {json.dumps(manifest)}")


if __name__ == "__main__":
    main()
