"""The audit stage: run every detector once per dataset, cache the findings, write audit.json.

Findings depend only on the files, their vectors and labels, so they are cached under
`<bottleneck_dir>/audit-results-v1/` (`retrainer.cache.layout`), keyed by a SHA-256 of exactly
those: an unchanged dataset costs one hash. The parts that depend on the run (splits after the
opt-in group split, the trained head's leak-adjusted test accuracy, warnings) are added when the
document is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, TypeVar

import numpy as np

from retrainer.audit import duplicates, label_issues, outliers
from retrainer.audit.balance import balance_warnings
from retrainer.audit.neighbours import one_blas_thread, take_rows
from retrainer.audit.options import AuditOptions
from retrainer.cache.layout import audit_findings_path
from retrainer.data.batches import decode_signatures
from retrainer.data.split import TESTING, TRAINING
from retrainer.io.atomic import write_bytes_atomically, write_text_atomically
from retrainer.io.host import release_free_memory
from retrainer.io.storage import AnyPath

if TYPE_CHECKING:
    from retrainer.cache.bottlenecks import Bottlenecks
    from retrainer.data.collection import ImageCollection, ImageFile
    from retrainer.training.evaluate import Evaluation

log = logging.getLogger(__name__)
Result = TypeVar("Result")

AUDIT_FORMAT = 1
# Bump when the detectors or their signatures change what they find: cached findings keyed with
# an older version are then recomputed.
DETECTORS_VERSION = 3  # 3: the label model fitted by the solver's own L-BFGS (other probabilities)


@dataclasses.dataclass(frozen=True)
class Findings:
    """What the detectors found; positions index `ImageCollection.images`.

    Attributes:
        exact: groups of byte-identical files.
        near: (group, weakest pair similarity) of near-duplicate files (exact copies merged in).
        mislabeled: (position, suggested class index, score), most likely wrong first.
        outliers: (position, score), most isolated first.
    """

    exact: tuple[tuple[int, ...], ...]
    near: tuple[tuple[tuple[int, ...], float], ...]
    mislabeled: tuple[tuple[int, int, float], ...]
    outliers: tuple[tuple[int, float], ...]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> "Findings":
        return cls(
            exact=tuple(tuple(int(p) for p in group) for group in document["exact"]),
            near=tuple((tuple(int(p) for p in group), float(similarity))
                       for group, similarity in document["near"]),
            mislabeled=tuple((int(p), int(s), float(score))
                             for p, s, score in document["mislabeled"]),
            outliers=tuple((int(p), float(score)) for p, score in document["outliers"]),
        )


def find_problems(collection: ImageCollection, bottlenecks: Bottlenecks,
                  bottleneck_dir: AnyPath, seed: int) -> tuple[Findings, bool]:
    """Run every detector on the decodable images (or read their cached findings).

    Returns:
        (Findings, True if they came from the cache).
    """
    usable = np.flatnonzero(bottlenecks.ok)
    if len(usable) < 2:  # nothing to compare; the pipeline reports the missing images
        return Findings((), (), (), ()), False
    digests = [bottlenecks.digests[position] for position in usable]
    vectors = take_rows(bottlenecks.vectors, usable)
    labels = np.array([collection.images[p].label_index for p in usable], np.int64)
    relpaths = [collection.images[p].relpath for p in usable]
    # The mislabeled-image check models one label per image: a multi-label set skips it.
    multi_label = any(len(collection.images[p].label_indices) > 1 for p in usable)
    key = _findings_key(vectors, labels, relpaths, digests,
                        collection.labels + (("<multi-label>",) if multi_label else ()), seed)
    cache_path = audit_findings_path(bottleneck_dir, key)
    try:
        return Findings.from_json(json.loads(cache_path.read_text("utf-8"))), True
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("Cached audit %s is unreadable (%s); auditing again.", cache_path, error)
    signatures = bottlenecks.signatures
    if signatures is None:  # a caller whose stage was not asked for them
        signatures = decode_signatures([collection.images[p].path for p in usable])
    else:
        signatures = signatures.take(usable)
    exact = duplicates.exact_groups(digests)
    # The label model (a seeded sample's fits, then its issues) on a thread of its own beside
    # the outliers, then the near pairs: each on every CPU (`_threads`), the near pairs once
    # the others are done, so that their working sets are freed before the near pairs' is made
    # (at a million images each is hundreds of MB). Each spends most of its time in numpy and
    # LAPACK, which release the GIL; each on one BLAS thread.
    seconds: dict[str, float] = {}

    def mislabeled() -> list[label_issues.LabelIssue]:
        model = _timed(seconds, "label model", label_issues.fit_out_of_fold, vectors, labels,
                       len(collection.labels), seed)
        return _timed(seconds, "mislabeled", label_issues.find_label_issues, model, labels)

    with one_blas_thread(), ThreadPoolExecutor(1, thread_name_prefix="audit") as pool:
        label_work = None if multi_label else pool.submit(mislabeled)
        far = _timed(seconds, "outliers", outliers.find_outliers, vectors, labels)
        issues = [] if label_work is None else label_work.result()
        release_free_memory()  # what the two freed on their threads, before the near pairs'
        pairs = _timed(seconds, "near pairs", duplicates.near_pairs, digests, vectors,
                       signatures.thumbnails, signatures.hashes)
    release_free_memory()
    log.info("Audit detectors: %s.", ", ".join(f"{name} {value:.1f} s"
                                                for name, value in seconds.items()))
    near = _near_groups(len(usable), exact, pairs)
    to_collection = usable.tolist()
    findings = Findings(
        exact=tuple(tuple(to_collection[p] for p in group) for group in exact),
        near=tuple((tuple(to_collection[p] for p in group), similarity)
                   for group, similarity in near),
        mislabeled=tuple((to_collection[i.position], i.suggested, round(i.score, 4))
                         for i in issues),
        outliers=tuple((to_collection[o.position], round(o.score, 2)) for o in far),
    )
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(cache_path, json.dumps(findings.to_json()))
    return findings, False


def _timed(seconds: dict[str, float], name: str, function: Callable[..., Result],
           *arguments: Any) -> Result:
    """`function(*arguments)`, its wall time added to `seconds[name]`."""
    started = time.perf_counter()
    try:
        return function(*arguments)
    finally:
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started


def _findings_key(vectors: np.ndarray, labels: np.ndarray, relpaths: Sequence[str],
                  digests: Sequence[str], names: Sequence[str], seed: int) -> str:
    digest = hashlib.sha256(
        f"audit-{AUDIT_FORMAT}-{DETECTORS_VERSION}-{seed}-{vectors.shape}".encode())
    digest.update(np.ascontiguousarray(vectors, np.float32).data)  # no 256 MB copy at 50k
    digest.update(labels.astype("<i8").tobytes())
    digest.update(json.dumps([list(relpaths), list(digests), list(names)]).encode("utf-8"))
    return digest.hexdigest()


def _near_groups(count: int, exact: list[list[int]],
                 pairs: list[duplicates.NearPair]) -> list[tuple[tuple[int, ...], float]]:
    """Near-duplicate groups (with their exact copies), each with its weakest pair's similarity."""
    edges = [(pair.first, pair.second) for pair in pairs]
    edges += [(group[0], member) for group in exact for member in group[1:]]
    weakest: dict[int, float] = {}
    groups = duplicates.connected_groups(count, edges)
    group_of = {member: index for index, group in enumerate(groups) for member in group}
    for pair in pairs:
        index = group_of[pair.first]
        weakest[index] = min(weakest.get(index, 1.0), pair.similarity)
    return [(tuple(group), round(weakest[index], 4)) for index, group in enumerate(groups)
            if index in weakest]  # groups of exact copies only are reported as exact


class DatasetAudit:
    """One run's audit: the findings, the collection they refer to, and the run's settings.

    With --keep_duplicates_in_one_split, `collection` is the one given with each duplicate group
    moved into one split (`moved` says which images moved): the run splits that one.
    """

    def __init__(self, options: AuditOptions, collection: ImageCollection,
                 bottlenecks: Bottlenecks) -> None:
        started = time.perf_counter()
        self.options = options
        self.collection = collection
        self.findings, self.cached = find_problems(collection, bottlenecks, options.bottleneck_dir,
                                                   options.seed)
        self.moved: list[tuple[str, str, str]] = []
        log.info("Audited %d images in %.1f s%s.", int(bottlenecks.ok.sum()),
                 time.perf_counter() - started, " (cached)" if self.cached else "")
        if options.keep_duplicates_in_one_split:
            self._keep_groups_in_one_split()

    def _keep_groups_in_one_split(self) -> None:
        """Move each duplicate group to its first member's split (in `.collection`).

        The first member is the first in the collection's order (label, then path); its split is
        retrain.py's hash of its path.
        """
        images = list(self.collection.images)
        edges = [(group[0], member) for group, _ in self.findings.near for member in group[1:]]
        edges += [(group[0], member) for group in self.findings.exact for member in group[1:]]
        for group in duplicates.connected_groups(len(images), edges):
            split = images[group[0]].split
            for member in group[1:]:
                if images[member].split != split:
                    self.moved.append((images[member].relpath, images[member].split, split))
                    images[member] = dataclasses.replace(images[member], split=split)
        if self.moved:
            log.info("Moved %d duplicate images into their group's split "
                     "(--keep_duplicates_in_one_split).", len(self.moved))
        self.collection = dataclasses.replace(self.collection, images=tuple(images))

    def write(self, evaluation: Optional[Evaluation],
              test_images: Sequence[ImageFile]) -> dict[str, Any]:
        """Write audit.json (atomically) and return its document."""
        document = self.document(evaluation, test_images)
        path = self.options.audit_file
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomically(path, (json.dumps(document, indent=1, ensure_ascii=False)
                                      + "\n").encode("utf-8"))
        return document

    def document(self, evaluation: Optional[Evaluation],
                 test_images: Sequence[ImageFile]) -> dict[str, Any]:
        """The audit.json document (docs/audit.md), paths relative to --image_dir."""
        images, names = self.collection.images, self.collection.labels
        findings = self.findings

        def group_entry(group: Sequence[int]) -> dict[str, Any]:
            splits = [images[p].split for p in group]
            return {"paths": [images[p].relpath for p in group],
                    "labels": [names[images[p].label_index] for p in group],
                    "splits": splits,
                    "leak": TRAINING in splits and len(set(splits)) > 1}

        exact = [group_entry(group) for group in findings.exact]
        near = [{**group_entry(group), "similarity": similarity}
                for group, similarity in findings.near]
        leaked = sorted(images[p].relpath for p in _test_images_with_training_copy(images,
                                                                                   findings))
        accuracy, count = _leak_free_accuracy(evaluation, test_images, set(leaked))
        return {
            "format": AUDIT_FORMAT,
            "image_dir": str(self.collection.image_dir),
            "exact_duplicates": exact,
            "near_duplicates": near,
            "likely_mislabeled": [
                {"path": images[p].relpath, "label": names[images[p].label_index],
                 "suggested": names[suggested], "score": score}
                for p, suggested, score in findings.mislabeled],
            "outliers": [{"path": images[p].relpath, "label": names[images[p].label_index],
                          "score": score} for p, score in findings.outliers],
            "test_accuracy": None if evaluation is None else evaluation.accuracy,
            "leak_adjusted_test_accuracy": accuracy,
            "leak_adjusted_test_count": count,
            "leaked_test_images": leaked,
            "moved_to_group_split": [{"path": path, "from": old, "to": new}
                                     for path, old, new in self.moved],
            "warnings": balance_warnings(self.collection.counts(),
                                         self.options.validation_percentage,
                                         self.options.testing_percentage),
            "cached": self.cached,
        }


def _test_images_with_training_copy(images: Sequence[ImageFile], findings: Findings) -> set[int]:
    groups = list(findings.exact) + [group for group, _ in findings.near]
    leaked: set[int] = set()
    for group in groups:
        if any(images[p].split == TRAINING for p in group):
            leaked.update(p for p in group if images[p].split == TESTING)
    return leaked


def _leak_free_accuracy(evaluation: Optional[Evaluation], test_images: Sequence[ImageFile],
                        leaked_paths: set[str]) -> tuple[Optional[float], int]:
    """Accuracy, and N, over the test predictions whose image has no copy in training (a
    prediction is right when it is one of the image's labels: its only one, or any of a
    multi-label image's)."""
    if evaluation is None or evaluation.count == 0:
        return None, 0
    clean = np.array([test_images[p].relpath not in leaked_paths for p in evaluation.positions])
    if not clean.any():
        return None, 0
    correct = np.array([predicted in test_images[position].label_indices for position, predicted
                        in zip(evaluation.positions, evaluation.predictions)])
    return float(correct[clean].mean()), int(clean.sum())
