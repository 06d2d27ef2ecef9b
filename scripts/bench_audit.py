"""Benchmark the dataset audit: detection quality on injected faults, and its cost at 1k / 50k.

Builds a folder of real Fashion-MNIST images (examples/fashion_mnist.py, --per-class per class),
then injects known faults:
  near copies  -- re-encoded (JPEG q70), resized (2x), shifted (1 px), cropped (1 px a side),
                  brightened (x1.3) copies of training images, named so each lands in another split;
  byte copies  -- files copied byte for byte into another class's folder;
  label flips  -- 3 % of the images moved to another class's folder;
  unrelated    -- scikit-image's photos (astronaut, coffee, ...), shrunk, in random class folders.
Computes the real efficientnet_lite0 vectors with the default engine (cached in --work), runs the
audit's detectors and prints recall and precision per fault kind, the evidence behind the
near-duplicate thresholds, and the audit's time: cold (signatures decoded), warm (signatures
cached), cached findings. Then runs the audit at --large real images (default 50,000; 0 skips),
whose real vectors are extracted once into --bottleneck_dir (minutes) and reused by reruns:
time per detector and for the whole stage, peak memory, and the near-duplicate groups found.

    PYTHONPATH=. python scripts/bench_audit.py [--per-class 100] [--large 50000] [--work DIR]
        [--bottleneck_dir /tmp/audit50k] [--large-only]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import resource
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
    from retrainer.data.split import assign_split

    for attempt in range(1000):
        name = f"{stem}_copy{attempt}.png"
        if assign_split(f"{folder.name}/{name}", 10, 10) != split:
            return name
    raise RuntimeError("no name found")


def inject_faults(root: Path, rng: np.random.Generator) -> dict[str, set]:
    """Inject the faults into `root` (class folders); returns the truth per kind."""
    import skimage.data

    from retrainer.data.split import TRAINING, assign_split

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
    from retrainer.audit.duplicates import CROP_ZOOM, small_descriptor
    from retrainer.audit.neighbours import similar_pairs, unit_rows
    from retrainer.audit.signatures import (
        SignatureCache,
        fourier_descriptor,
        hamming,
        thumbnail_descriptor,
        zoomed_in,
    )

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
        first, second = similar_pairs(unit, 0.5)
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
    descriptors["small"] = small_descriptor(thumbnails)
    descriptors["enlarged"] = small_descriptor(zoomed_in(thumbnails, CROP_ZOOM))
    shift_crop_evidence(descriptors, thumbnails, truth, index, copies)


def shift_crop_evidence(descriptors, thumbnails, truth, index, copies) -> None:
    """The shift and crop tests' scores and gains on the injected copies against every other
    pair that passes the tests' pre-tests (spectrum and vector; vector and crop gate)."""
    from retrainer.audit import duplicates as d
    from retrainer.audit.neighbours import similar_pairs

    tests = {"shift": (d.shift_scores, d.SHIFT_GAIN, lambda a, b: (
                 np.einsum("ij,ij->i", descriptors["fourier"][a], descriptors["fourier"][b])
                 >= d.FOURIER_MATCH)),
             "crop": (d.zoom_scores, d.ZOOM_GAIN, lambda a, b: d.crop_gate(
                 {"small": descriptors["small"], "enlarged": descriptors["enlarged"]}, a, b)
                 >= d.CROP_GATE)}
    for kind, (scores, gain, pre_test) in tests.items():
        vector_match = d.SHIFT_VECTOR_MATCH if kind == "shift" else d.CROP_VECTOR_MATCH
        first, second = similar_pairs(descriptors["vector"], vector_match, pre_test)
        others = [(a, b) for a, b in zip(first.tolist(), second.tolist()) if (a, b) not in copies]
        pairs = [tuple(sorted(index[path] for path in pair)) for pair in truth[kind]]
        copy_score, copy_plain = scores(thumbnails[[a for a, _ in pairs]], thumbnails[[b for _, b in pairs]])
        if others:
            other_score, other_plain = scores(thumbnails[[a for a, _ in others]],
                                              thumbnails[[b for _, b in others]])
        else:
            other_score = other_plain = np.zeros(1)
        helped = other_score - other_plain >= gain
        print(f"  {kind} test: copies min {copy_score.min():.4f}, gain min "
              f"{(copy_score - copy_plain).min():.4f}; {len(others)} other pairs pass the pre-tests: "
              f"max {other_score.max():.4f}, max with gain >= {gain} "
              f"{other_score[helped].max() if helped.any() else float('nan'):.4f}")


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
    return findings


def large_collection(count: int, cache: Path):
    """`count` real Fashion-MNIST training images (count / 10 per class) under `cache`, with
    their real vectors from the default engine, cached in `cache`/bottlenecks (a rerun reads them)."""
    from retrainer.cache.bottlenecks import compute_bottlenecks
    from retrainer.data.discovery import discover_images
    from retrainer.engines import AUTO
    from retrainer.engines.factory import create_engine
    from retrainer.extractors import create_extractor

    idx_dir = Path(os.environ.get("RETRAINER_FASHION_MNIST", REPO / ".cache" / "fashion-mnist"))
    root = fashion_module().write_image_folder(idx_dir, cache / f"images_{count}",
                                               per_class=count // 10)
    collection = discover_images(root, 10, 10)
    engine = create_engine(create_extractor("efficientnet_lite0"), AUTO)
    bottlenecks = compute_bottlenecks([image.path for image in collection.images], engine,
                                      cache / "bottlenecks", show_progress=False)
    return collection, bottlenecks


def large_run(count: int, cache: Path) -> None:
    """The audit stage at `count` real images with real vectors (extracted once into `cache`):
    wall time per detector, the whole stage, and memory."""
    from retrainer.audit import duplicates, label_issues, outliers
    from retrainer.audit.run import find_problems
    from retrainer.audit.signatures import SignatureCache
    from retrainer.cache.layout import audit_findings_folder

    collection, bottlenecks = large_collection(count, cache)
    paths = [image.path for image in collection.images]
    started = time.perf_counter()
    thumbnails, hashes = SignatureCache(cache / "bottlenecks").signatures(paths, bottlenecks.digests)
    print(f"\n{count} images: signatures {time.perf_counter() - started:.1f} s "
          "(decoded once, then cached)")
    vectors, digests = bottlenecks.vectors, bottlenecks.digests
    labels = np.array([image.label_index for image in collection.images])
    resident = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    tracemalloc.start()
    stages = {}
    started = time.perf_counter()
    pairs = duplicates.near_pairs(digests, vectors, thumbnails, hashes)
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
    shutil.rmtree(audit_findings_folder(cache / "bottlenecks"), ignore_errors=True)
    started = time.perf_counter()
    findings, _ = find_problems(collection, bottlenecks, cache / "bottlenecks", 0)
    stage = time.perf_counter() - started
    print("Detectors: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in stages.items())
          + f"; peak traced memory {peak / 2**30:.2f} GiB")
    print(f"Audit stage (find_problems, signatures cached): {stage:.1f} s; process peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB "
          f"({resident:.2f} GiB before the audit)")
    relpath = [image.relpath for image in collection.images]
    print(f"{len(pairs)} near pairs, {len(findings.near)} near groups, {len(findings.exact)} exact "
          f"groups; first groups: {[[relpath[p] for p in group] for group, _ in findings.near[:10]]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--large", type=int, default=50_000)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--bottleneck_dir", type=Path, default=Path("/tmp/audit50k"),
                        help="cache of the --large images and their vectors (reruns reuse it)")
    parser.add_argument("--large-only", action="store_true", help="only the --large run")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.large_only:
        large_run(args.large, args.bottleneck_dir)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_audit_"))
    from retrainer.cache.bottlenecks import compute_bottlenecks
    from retrainer.data.discovery import discover_images
    from retrainer.engines import AUTO
    from retrainer.engines.factory import create_engine
    from retrainer.extractors import create_extractor

    root = work / f"images_{args.per_class}"
    if root.exists():
        shutil.rmtree(root)
    idx_dir = Path(os.environ.get("RETRAINER_FASHION_MNIST", REPO / ".cache" / "fashion-mnist"))
    fashion_module().write_image_folder(idx_dir, root, per_class=args.per_class)
    truth = inject_faults(root, np.random.default_rng(0))
    collection = discover_images(root, 10, 10)
    bottlenecks = compute_bottlenecks([image.path for image in collection.images],
                                      create_engine(create_extractor("efficientnet_lite0"), AUTO),
                                      work / "bottlenecks",
                                      show_progress=False)
    print(f"{len(collection.images)} images, {bottlenecks.computed} vectors computed")
    findings = timed_audit(collection, bottlenecks, work)
    quality(collection, findings, truth)
    thresholds_evidence(collection, bottlenecks, truth, work)
    if args.large:
        large_run(args.large, args.bottleneck_dir)


if __name__ == "__main__":
    main()
