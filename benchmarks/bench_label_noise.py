"""Benchmark the audit's "likely mislabeled" finding against known label noise, on real images.

Flips k % of the labels of a real dataset (each flipped image gets a uniformly drawn other class;
several seeds) and scores the flags of each variant against the flips: precision (flags that
are flips), recall (flips flagged), F1, and the flags at 0 % (a real dataset's own doubtful labels,
counted as false here). Variants (the same folds and 64-d features; confident learning's
per-class thresholds throughout):
  chosen        -- the audit's: L2 chosen along a path by out-of-fold cross entropy, flags where
                   the most probable class beats the label by odds >= MIN_ODDS (`find_label_issues`);
  chosen margin -- that model with the earlier rule, p(suggested) - p(given) >= 0.8;
  numpy 5e-3    -- the fixed penalty 5e-3 (numpy L-BFGS to convergence) and the margin rule;
  head 5e-3     -- the fixed penalty 5e-3 fitted by the head's `training.convex.fit_head` (with
                   more than 8,192 training rows it fits the penalty x 8,192 / rows) and the
                   margin rule: the audit's first label model.
Also the small-set check: --small draws of a few images per class from each real dataset, correct
labels, and counts the images flagged (every flag there is false).

Datasets: Fashion-MNIST's t10k images (--fashion images per class, 28x28 PNGs), and each class
folder given with --photos (default: 240x180 close-ups of 20 real photographs, built by
benchmarks.build_photo_classes). Vectors: the default extractor and precision, cached in
--bottleneck_dir (a rerun reads them).

    python -m benchmarks.bench_label_noise [--fashion 1000] [--photos DIR,...] [--rates 1,3,10]
        [--seeds 3] [--models chosen,margin,numpy,head] [--small 20] [--bottleneck_dir DIR] [--smoke]
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks import cli
from benchmarks.data import fashion_mnist_folder
from benchmarks.timing import machine_line

OLD_L2 = 5e-3
OLD_ITERATIONS = 100
SMALL_PER_CLASS = (3, 4, 6, 8, 12)


def dataset_vectors(root: Path, cache: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(float32 [N, D] vectors, int64 [N] labels, class names) of a class folder."""
    from retrainer.cache.bottlenecks import compute_bottlenecks
    from retrainer.data.discovery import discover_images
    from retrainer.engines import AUTO
    from retrainer.engines.factory import create_engine
    from retrainer.extractors import create_extractor

    collection = discover_images(root, 10, 10)
    engine = create_engine(create_extractor("efficientnet_lite0"), AUTO)
    bottlenecks = compute_bottlenecks([image.path for image in collection.images], engine, cache,
                                      show_progress=False)
    labels = np.array([image.label_index for image in collection.images], np.int64)
    return bottlenecks.vectors[bottlenecks.ok], labels[bottlenecks.ok], list(collection.labels)


def label_models() -> dict[str, Callable[[np.ndarray, np.ndarray, int], list]]:
    """name -> (vectors, labels, classes) -> the LabelIssue list of that variant."""
    from retrainer.audit import label_issues
    from retrainer.audit.neighbours import one_blas_thread, principal_components

    def fixed(fit: Callable[[np.ndarray, np.ndarray, int], tuple]) -> Callable:
        """The audit's folds and features, each fold fitted by `fit` at OLD_L2."""
        def model(vectors: np.ndarray, labels: np.ndarray, classes: int) -> object:
            features = principal_components(vectors, label_issues.DIMENSIONS).astype(np.float32)
            folds = label_issues._stratified_folds(labels, label_issues.FOLDS, 0)
            layers = tuple(fit(features[folds != fold], labels[folds != fold], classes)
                           if (folds == fold).any() and not (folds == fold).all() else None
                           for fold in range(label_issues.FOLDS))
            return label_issues.OutOfFold(features, folds, layers, classes, OLD_L2,
                                          np.bincount(labels, minlength=classes))
        return model

    def numpy_fit(features: np.ndarray, labels: np.ndarray, classes: int) -> tuple:
        from retrainer.training.solver import fit_layer

        with one_blas_thread():
            fit = fit_layer(features, labels, classes, OLD_L2, options=label_issues.SOLVER)
        return fit.weights, fit.biases

    def head_fit(features: np.ndarray, labels: np.ndarray, classes: int) -> tuple:
        from retrainer.training.convex import ConvexConfig, fit_head

        fit = fit_head(features, labels, features[:0], labels[:0], classes,
                       ConvexConfig(l2_path=(OLD_L2,), max_iterations=OLD_ITERATIONS))
        return fit.weights, fit.biases

    def chosen(vectors: np.ndarray, labels: np.ndarray, classes: int) -> list:
        return label_issues.find_label_issues(
            label_issues.fit_out_of_fold(vectors, labels, classes), labels)

    def margin_rule(model: Callable) -> Callable:
        return lambda vectors, labels, classes: margin_flags(model(vectors, labels, classes)[:],
                                                             labels)

    return {"chosen": chosen, "margin": margin_rule(label_issues.fit_out_of_fold),
            "numpy": margin_rule(fixed(numpy_fit)), "head": margin_rule(fixed(head_fit))}


MODEL_NAMES = {"chosen": "chosen L2, odds 20 (default)",
               "margin": "chosen L2, margin 0.8", "numpy": "numpy L2 5e-3, margin 0.8",
               "head": "head solver L2 5e-3, margin 0.8"}
OLD_MARGIN = 0.8


def margin_flags(probabilities: np.ndarray, labels: np.ndarray) -> list:
    """The earlier rule: confident learning's off-diagonal images whose suggested class's
    probability exceeds the given one's by OLD_MARGIN (positions only, as LabelIssue-likes)."""
    from retrainer.audit.label_issues import LabelIssue

    counts = np.bincount(labels, minlength=probabilities.shape[1])
    sums = np.bincount(labels, probabilities[np.arange(len(labels)), labels],
                       probabilities.shape[1])
    thresholds = np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)
    confident = np.where(probabilities >= thresholds, probabilities, -1.0)
    suggested = confident.argmax(axis=1)
    everyone = np.arange(len(labels))
    given = probabilities[everyone, labels]
    disputed = ((confident.max(axis=1) >= 0) & (suggested != labels)
                & (probabilities[everyone, suggested] - given >= OLD_MARGIN))
    return [LabelIssue(int(row), int(suggested[row]), float(1 - given[row]))
            for row in np.flatnonzero(disputed)]


def flipped(labels: np.ndarray, classes: int, rate: float,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(noisy labels, bool [N] which were flipped): round(rate x N) images, each given a
    uniformly drawn other class."""
    noisy = labels.copy()
    chosen = rng.choice(len(labels), round(rate * len(labels)), replace=False)
    noisy[chosen] = (labels[chosen] + rng.integers(1, classes, len(chosen))) % classes
    mask = np.zeros(len(labels), bool)
    mask[chosen] = True
    return noisy, mask


def noise_rows(name: str, vectors: np.ndarray, labels: np.ndarray, classes: int, models: dict,
               rates: list[float], seeds: int) -> list[str]:
    """Markdown rows: per rate and model, flags / precision / recall (mean over seeds, range)."""
    rows = []
    for rate in rates:
        for model_name, model in models.items():
            flags, precision, recall, f1, seconds, right = [], [], [], [], [], []
            for seed in range(seeds if rate else 1):
                noisy, mask = flipped(labels, classes, rate / 100, np.random.default_rng(seed))
                started = time.perf_counter()
                issues = model(vectors, noisy, classes)
                seconds.append(time.perf_counter() - started)
                hits = [issue for issue in issues if mask[issue.position]]
                flags.append(len(issues))
                if rate:
                    precision.append(len(hits) / max(len(issues), 1))
                    recall.append(len(hits) / mask.sum())
                    f1.append(2 * len(hits) / (len(issues) + mask.sum()))
                    right.append(sum(labels[issue.position] == issue.suggested for issue in hits)
                                 / max(len(hits), 1))
            rows.append(f"| {name} | {rate:g} % | {MODEL_NAMES[model_name]} | "
                        f"{spread(flags, '.0f')} | {spread(precision)} | {spread(recall)} | "
                        f"{spread(f1)} | "
                        f"{spread(right)} | {np.mean(seconds):.2f} |")
            print(rows[-1], flush=True)
    return rows


def spread(values: list, form: str = ".2f") -> str:
    """mean (min-max) of `values`, or '-'."""
    if not values:
        return "-"
    mean = format(float(np.mean(values)), form)
    if len(values) == 1 or min(values) == max(values):
        return mean
    return f"{mean} ({format(min(values), form)}-{format(max(values), form)})"


def small_rows(name: str, vectors: np.ndarray, labels: np.ndarray, classes: int, models: dict,
               draws: int) -> list[str]:
    """Markdown rows: on `draws` random small subsets (3-6 classes of SMALL_PER_CLASS images each,
    correct labels), the images flagged per model (all false)."""
    rng = np.random.default_rng(0)
    subsets = []
    for _ in range(draws):
        chosen = rng.choice(classes, int(rng.integers(3, min(6, classes) + 1)), replace=False)
        per_class = int(rng.choice(SMALL_PER_CLASS))
        members = np.concatenate([rng.choice(np.flatnonzero(labels == label), min(
            per_class, int((labels == label).sum())), replace=False) for label in chosen])
        subsets.append((members, np.searchsorted(np.sort(chosen), labels[members])))
    rows = []
    for model_name, model in models.items():
        flagged = [len(model(vectors[members], small, int(small.max()) + 1))
                   for members, small in subsets]
        images = sum(len(members) for members, _ in subsets)
        rows.append(f"| {name} | {draws} sets of 3-6 classes x {SMALL_PER_CLASS} | "
                    f"{MODEL_NAMES[model_name]} | {sum(flagged)} of {images} "
                    f"({sum(flagged) / images:.1%}) | {sum(1 for f in flagged if f)} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--fashion", type=int, default=1000, help="t10k images per class (0: none)")
    parser.add_argument("--photos", default="", help="class folders, comma-separated, or none (default: "
                        "build 800 close-ups of 20 photographs)")
    parser.add_argument("--photo-count", type=int, default=800)
    parser.add_argument("--rates", default="0,1,3,10", help="percent of labels flipped")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--models", default="chosen,margin,numpy,head")
    parser.add_argument("--small", type=int, default=20, help="small correct-label draws per set")
    parser.add_argument("--bottleneck_dir", type=Path, default=None)
    args = cli.parse(parser, {"fashion": 12, "photo_count": 40, "rates": "0,10", "seeds": 1,
                              "small": 2})
    print(machine_line())
    work = Path(tempfile.mkdtemp(prefix="bench_label_noise_"))
    cache = args.bottleneck_dir or work / "bottlenecks"
    folders = {}
    if args.fashion:
        folders["Fashion-MNIST"] = fashion_mnist_folder(work / "fashion", args.fashion, "t10k")
    for folder in filter(None, args.photos.replace("none", "").split(",")):
        folders[Path(folder).name] = Path(folder)
    if not args.photos:
        folders["photo close-ups"] = photo_classes(work / "photos", args.photo_count)
    all_models = label_models()
    models = {name: all_models[name] for name in args.models.split(",")}
    rates = [float(rate) for rate in args.rates.split(",")]
    noise, small = [], []
    for name, folder in folders.items():
        vectors, labels, classes = dataset_vectors(folder, cache)
        name = f"{name} ({len(labels)}, {len(classes)} classes)"
        noise += noise_rows(name, vectors, labels, len(classes), models, rates, args.seeds)
        if args.small:
            small += small_rows(name, vectors, labels, len(classes), models, args.small)
    print("\n| data | flipped | variant | flags | precision | recall | F1 | suggested = true "
          "class | seconds |\n|---|---|---|---|---|---|---|---|---|")
    print("\n".join(noise))
    if small:
        print("\n| data | small sets (correct labels) | label model | images flagged | sets with "
              "a flag |\n|---|---|---|---|---|")
        print("\n".join(small))
    print(machine_line())
    shutil.rmtree(work)


def photo_classes(out: Path, count: int) -> Path:
    """`count` 240x180 close-ups of 20 real photographs (benchmarks.build_photo_classes)."""
    import os

    from benchmarks.build_photo_classes import CROP, SIZE, source_folder
    from benchmarks.photos import PHOTOS_ENV, photo_set

    os.environ[PHOTOS_ENV] = str(source_folder(out.with_name("sources")))
    photo_set(out, count, SIZE, crop=CROP)
    return out


if __name__ == "__main__":
    main()
