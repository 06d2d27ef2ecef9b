"""Build all 70,000 Fashion-MNIST images as one class-folder dataset, and cache their vectors.

The train (60,000) and t10k (10,000) idx files become `<out>/images/<class>/{train,t10k}_<i>.png`
(28x28 grey PNGs, built by examples/fashion_mnist.py); `retrain` then splits them by file-name
hash like any folder. The vectors of the default extractor at the default precision are computed
once into `<out>/bottlenecks`, so benchmarks and runs with `--bottleneck_dir <out>/bottlenecks`
reuse them. Each part is built under a temporary name and renamed when complete; rerunning does
only what is missing. Several minutes of CPU: run it under the team's CPU lock.

    python -m benchmarks.build_fashion_mnist_70k --out /work/team/data/fashion_mnist_70k
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUBSETS = {"train": 6000, "t10k": 1000}  # images per class in each idx file


def fashion_module():
    spec = importlib.util.spec_from_file_location("fashion_mnist", REPO / "examples" / "fashion_mnist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_images(idx_dir: Path, out: Path) -> Path:
    """`out`/images with both subsets (hard links to per-subset folders under `out`/parts)."""
    images = out / "images"
    if images.is_dir():
        return images
    module = fashion_module()
    parts = [module.write_image_folder(idx_dir, out / "parts" / f"{subset}_{per_class}",
                                       per_class, subset)
             for subset, per_class in SUBSETS.items()]
    staging = Path(tempfile.mkdtemp(prefix=".images.", dir=out))
    try:
        for part in parts:
            for source in part.rglob("*.png"):
                target = staging / source.parent.name / source.name
                target.parent.mkdir(exist_ok=True)
                os.link(source, target)
        os.replace(staging, images)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return images


def build_vectors(images: Path, bottleneck_dir: Path) -> None:
    """The default extractor's vectors of every image, at the default (auto) precision."""
    from retrainer.cache.bottlenecks import compute_bottlenecks
    from retrainer.config import RetrainConfig
    from retrainer.engines.factory import create_engine
    from retrainer.extractors import create_extractor

    defaults = RetrainConfig(image_dir=images)
    engine = create_engine(create_extractor(defaults.tfhub_module), defaults.extractor_precision)
    paths = sorted(images.rglob("*.png"))
    started = time.perf_counter()
    result = compute_bottlenecks(paths, engine, bottleneck_dir, max(32, engine.batch_size))
    print(f"{len(paths)} images: {result.computed} vectors computed, {result.reused} reused, "
          f"{engine.precision}, {time.perf_counter() - started:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--idx-dir", type=Path, default=Path(
        os.environ.get("RETRAINER_FASHION_MNIST", REPO / ".cache" / "fashion-mnist")))
    parser.add_argument("--no-vectors", action="store_true", help="images only")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    images = build_images(args.idx_dir, args.out)
    print(f"images: {images}")
    if not args.no_vectors:
        build_vectors(images, args.out / "bottlenecks")


if __name__ == "__main__":
    main()
