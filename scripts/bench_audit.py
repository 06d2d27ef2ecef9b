"""Benchmark the dataset audit: detection quality on injected faults, and its cost at 1k / 50k.

Builds a folder of real Fashion-MNIST images (examples/fashion_mnist.py, --per-class per class),
then injects known faults:
  near copies  -- re-encoded (JPEG q70), resized (2x), shifted (1 px), cropped (1 px a side),
                  brightened (x1.3) copies of training images, named so each lands in another split;
  byte copies  -- files copied byte for byte into another class's folder;
  label flips  -- 3 % of the images moved to another class's folder;
  unrelated    -- scikit-image's photos (astronaut, coffee, ...), shrunk, in random class folders.
Computes the real efficientnet_lite0 vectors (cached in --work), runs the audit's detectors and
prints recall and precision per fault kind, the evidence behind the near-duplicate thresholds,
and the audit's time: cold (signatures decoded), warm (signatures cached), cached findings. Then
times the detectors at --large images (default 50,000) on synthetic-size data: the real vectors
and thumbnails tiled with noise, as a ratio to the 1k run, with tracemalloc's peak memory.

    PYTHONPATH=. python scripts/bench_audit.py [--per-class 100] [--large 50000] [--work DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

REPO = Path(__file__).resolve().parent.parent
KINDS = ("jpeg", "resize", "shift", "crop", "bright")


def fashion_module():
    spec = importlib.util.spec_from_file_location("fashion_mnist", REPO / "examples" / "fashion_mnist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def near_copy(image: Image.Image, kind: str) -> Image.Image:
    """A re-made copy of a 28x28 grey image."""
    if kind == "jpeg":
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=70)
        return Image.open(io.BytesIO(buffer.getvalue())).copy()
    if kind == "resize":
        return image.resize((image.width * 2, image.height * 2), Image.Resampling.BILINEAR)
    if kind == "shift":
        pixels = np.asarray(image)
        shifted = np.zeros_like(pixels)
        shifted[1:, :-1] = pixels[:-1, 1:]
        return Image.fromarray(shifted)
    if kind == "crop":
        return image.crop((1, 1, image.width - 1, image.height - 1)).resize(image.size,
                                                                           Image.Resampling.BILINEAR)
    return ImageEnhance.Brightness(image).enhance(1.3)


def name_in_other_split(folder: Path, stem: str, split: str) -> str:
    """A new file name in `folder` whose retrain.py split differs from `split`."""
    from retrainer.split import assign_split

    for attempt in range(1000):
        name = f"{stem}_copy{attempt}.png"
        if assign_split(f"{folder.name}/{name}", 10, 10) != split:
            return name
    raise RuntimeError("no name found")


def inject_faults(root: Path, rng: np.random.Generator) -> dict[str, set]:
    """Inject the faults into `root` (class folders); returns the truth per kind."""
    import skimage.data

    from retrainer.split import TRAINING, assign_split

    classes = sorted(path for path in root.iterdir() if path.is_dir())
    files = sorted(path for folder in classes for path in folder.iterdir())
    rng.shuffle(files)
    truth: dict[str, set] = {kind: set() for kind in (*KINDS, "byte", "flip", "unrelated")}
    cursor = 0
    for kind in KINDS:
        placed = 0
        while placed < max(4, len(files) // 125):
            source = files[cursor]
            cursor += 1
            relpath = f"{source.parent.name}/{source.name}"
            if assign_split(relpath, 10, 10) != TRAINING:
                continue
            name = name_in_other_split(source.parent, source.stem, TRAINING)
            near_copy(Image.open(source), kind).save(source.parent / name)
            truth[kind].add(frozenset({relpath, f"{source.parent.name}/{name}"}))
            placed += 1
    for source in files[cursor:cursor + max(4, len(files) // 100)]:
        other = classes[(classes.index(source.parent) + 1) % len(classes)]
        shutil.copyfile(source, other / f"dup_{source.name}")
        truth["byte"].add(frozenset({f"{source.parent.name}/{source.name}",
                                     f"{other.name}/dup_{source.name}"}))
    cursor += max(4, len(files) // 100)
    for source in files[cursor:cursor + int(0.03 * len(files))]:
        other = classes[(classes.index(source.parent) + int(rng.integers(1, len(classes))))
                        % len(classes)]
        source.rename(other / source.name)
        truth["flip"].add(f"{other.name}/{source.name}")
    photos = ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field",
              "immunohistochemistry", "page")
    for index, name in enumerate(photos):
        folder = classes[index % len(classes)]
        pixels = getattr(skimage.data, name)()
        Image.fromarray(pixels).convert("L").resize((28, 28)).save(folder / f"photo_{name}.png")
        truth["unrelated"].add(f"{folder.name}/photo_{name}.png")
    return truth


def score(found: set, expected: set) -> str:
    hits = len(found & expected)
    recall = hits / len(expected) if expected else float("nan")
    precision = hits / len(found) if found else float("nan")
    return f"recall {recall:5.2f} ({hits}/{len(expected)})  precision {precision:5.2f} ({hits}/{len(found)})"


def quality(collection, findings, truth) -> None:
    images, names = collection.images, collection.labels
    relpath = [image.relpath for image in images]
    exact_pairs = {frozenset({relpath[a], relpath[b]}) for group in findings.exact
                   for a in group for b in group if a < b}
    near_pairs = {frozenset({relpath[a], relpath[b]}) for group, _ in findings.near
                  for a in group for b in group if a < b}
    print("\nDetection on injected faults:")
    print(f"  {'byte copies (exact)':<28} {score(exact_pairs, truth['byte'])}")
    all_near = set().union(*(truth[kind] for kind in KINDS))
    for kind in KINDS:
        found = near_pairs & truth[kind]
        print(f"  {'near: ' + kind:<28} recall {len(found) / len(truth[kind]):5.2f} "
              f"({len(found)}/{len(truth[kind])})")
    print(f"  {'near: all kinds':<28} {score(near_pairs - exact_pairs, all_near)}")
    unexpected = sorted(tuple(sorted(pair)) for pair in near_pairs - exact_pairs - all_near)
    print(f"    pairs not injected (natural Fashion-MNIST duplicates or false): {unexpected[:12]}")
    mislabeled = {relpath[p] for p, _, _ in findings.mislabeled}
    explained = {path for pair in truth["byte"] for path in pair} | truth["unrelated"]
    print(f"  {'label flips (3 %)':<28} {score(mislabeled, truth['flip'])}; "
          f"{len(mislabeled & explained)} more are byte copies/photos")
    far = {relpath[p] for p, _ in findings.outliers}
    print(f"  {'unrelated photos':<28} {score(far, truth['unrelated'])}; of the other outliers "
          f"{len(far & (truth['flip'] | explained) - truth['unrelated'])} are flips/byte copies, "
          f"{len(far - truth['flip'] - explained)} not injected")
    print(f"    mislabeled, not injected: {sorted(mislabeled - truth['flip'] - explained)[:40]}")
    print(f"    outliers, not injected: {sorted(far - truth['flip'] - explained)}")
    del names


def thresholds_evidence(collection, bottlenecks, truth, work: Path) -> None:
    """Scores of injected copy pairs against the best non-copy pairs, per descriptor."""
    from retrainer.audit.neighbours import similar_pairs, unit_rows
    from retrainer.audit.signatures import (SignatureCache, fourier_descriptor, hamming,
                                            thumbnail_descriptor)

    paths = [image.path for image in collection.images]
    thumbnails, hashes = SignatureCache(work / "bottlenecks").signatures(paths, bottlenecks.digests)
    index = {image.relpath: position for position, image in enumerate(collection.images)}
    descriptors = {"vector": unit_rows(bottlenecks.vectors),
                   "thumbnail": thumbnail_descriptor(thumbnails),
                   "fourier": fourier_descriptor(thumbnails)}
    copies = {tuple(sorted(index[path] for path in pair)) for kind in KINDS for pair in truth[kind]}
    copies |= {tuple(sorted(index[path] for path in pair)) for pair in truth["byte"]}
    print("\nThreshold evidence: cosine of each injected copy pair, and the 99.9th percentile /"
          " maximum over all other pairs (should be below the copies):")
    for name, unit in descriptors.items():
        first, second = similar_pairs([unit], 0.5)
        similarity = np.einsum("ij,ij->i", unit[first], unit[second])
        other = np.array([s for a, b, s in zip(first.tolist(), second.tolist(), similarity)
                          if (a, b) not in copies]) if len(first) else np.zeros(1)
        line = [f"  {name:<9}"]
        for kind in KINDS:
            pairs = [tuple(sorted(index[path] for path in pair)) for pair in truth[kind]]
            values = [float(unit[a] @ unit[b]) for a, b in pairs]
            line.append(f"{kind} min {min(values):.3f}")
        line.append(f"| others p99.9 {np.percentile(other, 99.9):.3f} max {other.max():.3f}")
        print(" ".join(line))
    pairs = [tuple(sorted(index[path] for path in pair)) for kind in KINDS for pair in truth[kind]]
    bits = hamming(hashes[[a for a, _ in pairs]], hashes[[b for _, b in pairs]])
    print(f"  phash bits differing, copy pairs: median {np.median(bits):.0f}, max {bits.max()}")
    crop_evidence(descriptors, thumbnails, truth, index, copies)


def crop_evidence(descriptors, thumbnails, truth, index, copies) -> None:
    """The crop test's zoomed score on cropped copies against other pairs passing its pre-tests."""
    from retrainer.audit import duplicates as d
    from retrainer.audit.neighbours import similar_pairs
    from retrainer.audit.signatures import aligned_correlation

    def zoomed(pairs):
        first, second = thumbnails[[a for a, _ in pairs]], thumbnails[[b for _, b in pairs]]
        score = aligned_correlation(first, second, d.ALIGN_REACH, d.CROP_SCALES, d.CROP_MARGIN)
        return score, score > aligned_correlation(first, second, d.ALIGN_REACH, margin=d.CROP_MARGIN)

    crops = [tuple(sorted(index[path] for path in pair)) for pair in truth["crop"]]
    first, second = similar_pairs(
        [descriptors["fourier"], descriptors["thumbnail"], descriptors["vector"]],
        d.FOURIER_MATCH, lambda cosines: (cosines[0] >= d.CROP_THUMBNAIL_MATCH)
        & (cosines[1] >= d.CROP_VECTOR_MATCH))
    others = [(a, b) for a, b in zip(first.tolist(), second.tolist()) if (a, b) not in copies]
    crop_score, crop_helps = zoomed(crops)
    other_score, other_helps = zoomed(others) if others else (np.zeros(1), np.zeros(1, bool))
    print(f"  crop test (zoomed, inner 24x24): cropped copies min {crop_score.min():.4f}, zoom "
          f"helps {crop_helps.sum()}/{len(crops)}; {len(others)} other pairs pass the pre-tests: "
          f"max {other_score.max():.4f}, max where zoom helps "
          f"{other_score[other_helps].max() if other_helps.any() else float('nan'):.4f}")


def timed_audit(collection, bottlenecks, work: Path) -> None:
    from retrainer.audit.run import find_problems

    times = {}
    for namespace in ("audit-results-v1", "audit-signatures-v1"):
        shutil.rmtree(work / "bottlenecks" / namespace, ignore_errors=True)
    for state in ("cold", "warm signatures", "cached findings"):
        if state == "warm signatures":
            shutil.rmtree(work / "bottlenecks" / "audit-results-v1", ignore_errors=True)
        started = time.perf_counter()
        findings, cached = find_problems(collection, bottlenecks, work / "bottlenecks", 0)
        times[state] = time.perf_counter() - started
    print(f"\nAudit time at {len(collection.images)} images: "
          + ", ".join(f"{state} {seconds:.2f} s" for state, seconds in times.items()))
    return findings, times["warm signatures"]


def real_thumbnails(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Signatures of the first `count` Fashion-MNIST training images, from the idx pixels."""
    from retrainer.audit.signatures import DECODE_SIZE, signature_of_pixels

    module = fashion_module()
    idx_dir = Path(os.environ.get("RETRAINER_FASHION_MNIST", REPO / ".cache" / "fashion-mnist"))
    pixels = module.read_images(idx_dir / module.IDX_FILES["train"][0], count)
    labels = module.read_labels(idx_dir / module.IDX_FILES["train"][1])[:count].astype(np.int64)
    thumbnails = np.empty((count, 32, 32), np.uint8)
    hashes = np.empty(count, np.uint64)
    for index, image in enumerate(pixels):
        rgb = Image.fromarray(image).convert("RGB").resize(DECODE_SIZE, Image.Resampling.BILINEAR)
        thumbnails[index], hashes[index] = signature_of_pixels(np.asarray(rgb))
    return thumbnails, hashes, labels


def large_run(vectors_1k: np.ndarray, labels_1k: np.ndarray, count: int, baseline: float,
              baseline_n: int) -> None:
    """Detectors at `count` images: real thumbnails and hashes of `count` Fashion-MNIST images;
    vectors: the 1k run's real vectors of the same class, tiled, with noise (no 50k extraction)."""
    from retrainer.audit import duplicates, label_issues, outliers

    rng = np.random.default_rng(0)
    thumbnails, hashes, labels = real_thumbnails(count)
    vectors = np.empty((count, vectors_1k.shape[1]), np.float32)
    for label in np.unique(labels):
        rows, pool = np.flatnonzero(labels == label), np.flatnonzero(labels_1k == label)
        vectors[rows] = vectors_1k[rng.choice(pool, len(rows))]
    vectors += rng.normal(0, 0.3 * vectors.std(), vectors.shape).astype(np.float32)
    digests = [f"{index:064x}" for index in range(count)]
    tracemalloc.start()
    stages = {}
    started = time.perf_counter()
    duplicates.near_pairs(digests, vectors, thumbnails, hashes)
    stages["near duplicates"] = time.perf_counter() - started
    started = time.perf_counter()
    probabilities = label_issues.out_of_fold_probabilities(vectors, labels, 10)
    label_issues.find_label_issues(probabilities, labels)
    stages["label issues"] = time.perf_counter() - started
    started = time.perf_counter()
    outliers.find_outliers(vectors, labels)
    stages["outliers"] = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    total = sum(stages.values())
    print(f"\nDetectors at {count} images (real thumbnails; real vectors resampled + noise): "
          f"{total:.1f} s (" + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in stages.items())
          + f"), peak traced memory {peak / 2**30:.2f} GiB (inputs "
          f"{(vectors.nbytes + thumbnails.nbytes) / 2**30:.2f} GiB); {total / baseline:.0f}x the "
          f"{baseline_n}-image audit (signatures cached) for {count / baseline_n:.0f}x the images.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--large", type=int, default=50_000)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_audit_"))
    from retrainer.bottlenecks import compute_bottlenecks
    from retrainer.discovery import discover_images
    from retrainer.extractors import create_extractor

    root = work / f"images_{args.per_class}"
    if root.exists():
        shutil.rmtree(root)
    idx_dir = Path(os.environ.get("RETRAINER_FASHION_MNIST", REPO / ".cache" / "fashion-mnist"))
    fashion_module().write_image_folder(idx_dir, root, per_class=args.per_class)
    truth = inject_faults(root, np.random.default_rng(0))
    collection = discover_images(root, 10, 10)
    bottlenecks = compute_bottlenecks([image.path for image in collection.images],
                                      create_extractor("efficientnet_lite0"), work / "bottlenecks",
                                      show_progress=False)
    print(f"{len(collection.images)} images, {bottlenecks.computed} vectors computed")
    findings, warm = timed_audit(collection, bottlenecks, work)
    quality(collection, findings, truth)
    thresholds_evidence(collection, bottlenecks, truth, work)
    labels = np.array([image.label_index for image in collection.images])
    large_run(bottlenecks.vectors, labels, args.large, warm, len(labels))


if __name__ == "__main__":
    main()
