"""Measure novelty scores: AUROC, in-distribution pass rate and out-of-distribution reject rate.

Three cases, each on the default extractor's cached vectors (`--bottleneck_dir`):
- `fm_photos`: a model of Fashion-MNIST (folder per class) shown real photographs;
- `photos_fm`: a model of photo crops (`python -m benchmarks.build_photo_crops`) shown Fashion-MNIST;
- `fm_heldout`: trained on 8 Fashion-MNIST classes, shown the other 2 (each `--pairs` entry).
Models train on the training split (file-name hash, 10 % validation, 10 % test); thresholds are
calibrated on the validation split for `--pass-rate`; the in-distribution figures are on the
test split. Candidates: the shipped score (retrainer.training.novelty, k-NN cosine distance to at
most 4096 training vectors) and the alternatives it was chosen over (k-NN with other k and
reference counts, class prototypes, Mahalanobis, max softmax probability, energy).

    python -m benchmarks.measure_novelty --fm /work/team/data/fashion_mnist_70k/images \
        --photos /work/team/data/photo_crops_60 \
        --bottleneck_dir /work/team/data/fashion_mnist_70k/bottlenecks \
        --photo_bottleneck_dir /tmp/photo_bottlenecks --cases all
    python -m benchmarks.measure_novelty --smoke    # tiny generated data, seconds (CI)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks import cli
from retrainer.training.novelty import calibrate_threshold, fit_novelty

Scorer = Callable[[np.ndarray], np.ndarray]


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(an outside score > an inside score), ties counting half (Mann-Whitney U)."""
    scores = np.concatenate([inside, outside])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]
    n_in, n_out = len(inside), len(outside)
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn(k: int, references: int) -> Callable[..., Scorer]:
    def fit(train, groups, validation, seed=0):
        rng = np.random.default_rng(seed)
        bank = _unit(train if len(train) <= references
                     else train[rng.choice(len(train), references, replace=False)])
        bank = bank.astype(np.float32)

        def score(x):
            out = []
            for start in range(0, len(x), 2048):
                similarity = _unit(x[start:start + 2048]).astype(np.float32) @ bank.T
                out.append(1 - -np.partition(-similarity, k - 1, axis=1)[:, k - 1])
            return np.concatenate(out)
        return score
    return fit


def shipped(train, groups, validation, seed=0) -> Scorer:
    return fit_novelty(train, groups, validation, seed=seed).scores


def prototypes(train, groups, validation, seed=0) -> Scorer:
    units = _unit(train)
    means = _unit(np.stack([units[groups == g].mean(0) for g in np.unique(groups)]))
    return lambda x: 1 - (_unit(x) @ means.T).max(1)


def mahalanobis(train, groups, validation, seed=0, shrink=0.1) -> Scorer:
    classes = np.unique(groups)
    means = np.stack([train[groups == c].mean(0) for c in classes])
    residual = train - means[np.searchsorted(classes, groups)]
    covariance = residual.T @ residual / len(residual)
    covariance = ((1 - shrink) * covariance
                  + shrink * np.trace(covariance) / len(covariance) * np.eye(len(covariance)))
    values, vectors = np.linalg.eigh(covariance)
    whiten = (vectors / np.sqrt(values)).astype(np.float32)
    centres = means @ whiten

    def score(x):
        z = x @ whiten
        distances = (z ** 2).sum(1, keepdims=True) - 2 * z @ centres.T + (centres ** 2).sum(1)
        return np.sqrt(np.maximum(distances.min(1), 0))
    return score


def softmax_scores(kind: str) -> Callable[..., Scorer]:
    """1 - max softmax probability, or the energy -logsumexp(logits), of an L2 logistic
    regression fitted by L-BFGS on standardised vectors."""
    def fit(train, groups, validation, seed=0, l2=1e-3):
        from scipy.optimize import minimize

        mean, scale = train.mean(0), train.std(0) + 1e-6
        z = ((train - mean) / scale).astype(np.float64)
        classes = np.unique(groups)
        y = np.searchsorted(classes, groups)
        onehot = np.eye(len(classes))[y]
        dims = z.shape[1] * len(classes)

        def loss(params):
            weights, biases = params[:dims].reshape(z.shape[1], -1), params[dims:]
            logits = z @ weights + biases
            logits -= logits.max(1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(1, keepdims=True)
            value = -np.log(p[np.arange(len(y)), y] + 1e-12).mean() + l2 * (weights ** 2).sum()
            gradient = (p - onehot) / len(y)
            return value, np.concatenate([(z.T @ gradient + 2 * l2 * weights).ravel(),
                                          gradient.sum(0)])
        fitted = minimize(loss, np.zeros(dims + len(classes)), jac=True, method="L-BFGS-B",
                          options={"maxiter": 300}).x
        weights, biases = fitted[:dims].reshape(z.shape[1], -1), fitted[dims:]

        def score(x):
            logits = ((x - mean) / scale) @ weights + biases
            top = logits.max(1)
            total = np.log(np.exp(logits - top[:, None]).sum(1))
            return 1 - 1 / np.exp(total) if kind == "msp" else -(top + total)
        return score
    return fit


CANDIDATES = {
    "knn k=5, 4096 refs (shipped)": shipped,
    "knn k=1, all refs": knn(1, 10 ** 9),
    "knn k=5, all refs": knn(5, 10 ** 9),
    "knn k=10, all refs": knn(10, 10 ** 9),
    "knn k=5, 1024 refs": knn(5, 1024),
    "knn k=1, 4096 refs": knn(1, 4096),
    "class prototypes (cosine)": prototypes,
    "Mahalanobis (tied, shrunk)": mahalanobis,
    "max softmax probability": softmax_scores("msp"),
    "energy": softmax_scores("energy"),
}


def measure(train, groups, validation, inside, outside, pass_rate, names) -> list[tuple]:
    rows = []
    for name in names:
        started = time.perf_counter()
        score = CANDIDATES[name](train, groups, validation)
        threshold = calibrate_threshold(score(validation), pass_rate)
        scores_in, scores_out = score(inside), score(outside)
        rows.append((name, auroc(scores_in, scores_out), float((scores_in <= threshold).mean()),
                     float((scores_out > threshold).mean()), time.perf_counter() - started))
    return rows


def print_table(title: str, counts: str, rows: list[tuple]) -> None:
    print(f"\n### {title}\n\n{counts}\n")
    print("| score | AUROC | in-distribution pass | out-of-distribution reject | s |")
    print("|---|---|---|---|---|")
    for name, area, passed, rejected, seconds in rows:
        print(f"| {name} | {area:.4f} | {passed * 100:.1f} % | {rejected * 100:.1f} % | "
              f"{seconds:.1f} |")
    sys.stdout.flush()


def folder_vectors(root: Path, bottleneck_dir: Path):
    """(vectors float32 [N, D], class int [N], split str [N], class names) of a class-folder set."""
    from retrainer.cache.bottlenecks import compute_bottlenecks
    from retrainer.config import RetrainConfig
    from retrainer.data.discovery import discover_images
    from retrainer.engines.factory import create_engine
    from retrainer.extractors import create_extractor

    collection = discover_images(root)
    defaults = RetrainConfig(image_dir=root)
    engine = create_engine(create_extractor(defaults.tfhub_module), defaults.extractor_precision)
    found = compute_bottlenecks([image.path for image in collection.images], engine,
                                bottleneck_dir, max(32, engine.batch_size), show_progress=False)
    print(f"{root}: {found.ok.sum()} vectors ({engine.spec.id}, {engine.precision}; "
          f"{found.computed} computed)", file=sys.stderr)
    ok = found.ok
    return (found.vectors[ok], np.array([i.label_index for i in collection.images])[ok],
            np.array([i.split for i in collection.images])[ok], collection.labels)


def _splits(vectors, classes, splits):
    return {name: (vectors[splits == name], classes[splits == name])
            for name in ("training", "validation", "testing")}


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--fm", type=Path)
    parser.add_argument("--photos", type=Path)
    parser.add_argument("--bottleneck_dir", type=Path, help="vector cache of --fm")
    parser.add_argument("--photo_bottleneck_dir", type=Path,
                        help="vector cache of --photos (default: --bottleneck_dir)")
    parser.add_argument("--cases", default="all")
    parser.add_argument("--pairs", nargs="*", default=["Shirt,T-shirt_top", "Sandal,Sneaker",
                                                      "Bag,Trouser", "Coat,Pullover",
                                                      "Ankle_boot,Dress"])
    parser.add_argument("--pass-rate", type=float, default=0.95)
    parser.add_argument("--candidates", default="all", help="'shipped' or 'all'")
    parser.add_argument("--ood-sample", type=int, default=2000)
    args = cli.parse(parser, {})  # --smoke: tiny synthetic vectors instead of the folders
    names = list(CANDIDATES) if args.candidates == "all" else [next(iter(CANDIDATES))]
    if args.smoke:
        rng = np.random.default_rng(0)
        centres = rng.random((4, 64)) * 3
        groups = rng.integers(0, 4, 300)

        def make(n):
            return (centres[rng.integers(0, 4, n)] + rng.random((n, 64))).astype(np.float32)

        train = (centres[groups] + rng.random((300, 64))).astype(np.float32)
        far = (rng.random((50, 64)) * 3).astype(np.float32)
        rows = measure(train, groups, make(60), make(60), far, args.pass_rate, names)
        print_table("smoke", "synthetic", rows)
        return
    cases = {"fm_photos", "photos_fm", "fm_heldout"} if args.cases == "all" else set(
        args.cases.split(","))
    rng = np.random.default_rng(0)
    fm = folder_vectors(args.fm, args.bottleneck_dir)
    photos = folder_vectors(args.photos, args.photo_bottleneck_dir or args.bottleneck_dir)
    if "fm_photos" in cases:
        split = _splits(*fm[:3])
        rows = measure(*split["training"], split["validation"][0], split["testing"][0],
                       photos[0], args.pass_rate, names)
        print_table("Fashion-MNIST model shown photographs",
                    f"train {len(split['training'][0])}, validation {len(split['validation'][0])}"
                    f", in-distribution test {len(split['testing'][0])}, photos {len(photos[0])}",
                    rows)
    if "photos_fm" in cases:
        split = _splits(*photos[:3])
        outside = _splits(*fm[:3])["testing"][0]
        outside = outside[rng.choice(len(outside), min(args.ood_sample, len(outside)),
                                     replace=False)]
        rows = measure(*split["training"], split["validation"][0], split["testing"][0], outside,
                       args.pass_rate, names)
        print_table("Photo model shown Fashion-MNIST",
                    f"train {len(split['training'][0])}, validation {len(split['validation'][0])}"
                    f", in-distribution test {len(split['testing'][0])}, Fashion-MNIST "
                    f"{len(outside)}", rows)
    if "fm_heldout" in cases:
        vectors, classes, splits, labels = fm
        for pair in args.pairs:
            held = [labels.index(_label(name)) for name in pair.split(",")]
            known = ~np.isin(classes, held)
            split = _splits(vectors[known], classes[known], splits[known])
            outside = vectors[~known & (splits == "testing")]
            rows = measure(*split["training"], split["validation"][0], split["testing"][0],
                           outside, args.pass_rate, names)
            print_table(f"8 Fashion-MNIST classes, shown the other 2 ({pair})",
                        f"train {len(split['training'][0])}, validation "
                        f"{len(split['validation'][0])}, in-distribution test "
                        f"{len(split['testing'][0])}, held-out test {len(outside)}", rows)


def _label(folder_name: str) -> str:
    from retrainer.data.discovery import normalize_label

    return normalize_label(folder_name)


if __name__ == "__main__":
    main()
