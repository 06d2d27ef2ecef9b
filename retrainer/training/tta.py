"""`--tta auto`: whether the exports should average each image with its mirror image.

Flip test-time augmentation runs the extractor on the image and on its mirror image and hands the
head the mean of both vectors. For subjects that look alike mirrored (clothes, animals, most
photos) the two views' errors partly cancel: on 70,000 Fashion-MNIST images the exported graph
gained half a point (90.40 % -> 90.88 % on 7,124 test images), where the head was fitted on int8
vectors and the graph computes float32 ones, which the mean of two views brings closer. For
other subjects (text, digits, left/right classes) the mirror image is a different picture.

So `auto` checks it on the validation split, never on the test split: the mirror images of up
to SAMPLE_IMAGES validation images go through the engine that computed the cached vectors, and
flip is dropped when it classifies fewer of them correctly than the plain vectors by more than
one standard error of the paired difference (McNemar's: with f images it fixes and b it breaks,
b - f > sqrt(f + b)). The cached vectors cannot show the gain itself (on Fashion-MNIST's int8
vectors flip moved 2,000 validation images from 91.95 % to 92.00 %), only a loss; without
validation images nothing is checked and flip stays off.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from retrainer.cache.entries import BottleneckCache
from retrainer.cache.layout import MIRRORED_SUBFOLDER
from retrainer.data.batches import decode_files, file_digest
from retrainer.engines.base import Engine
from retrainer.io.storage import AnyPath, as_path
from retrainer.training.head_types import Head

log = logging.getLogger(__name__)

SAMPLE_IMAGES = 500  # at most this many validation images are mirrored: one engine pass each
CHUNK = 64  # images decoded and run at a time


@dataclasses.dataclass(frozen=True)
class TtaChoice:
    """The checked choice: `flip` unless it lost, `none` then or without validation images.

    Attributes:
        mode: "flip" or "none".
        images: validation images measured (0: nothing to measure on).
        plain_accuracy: their accuracy on the plain vectors.
        flip_accuracy: on the mean of each image's and its mirror image's vectors.
        standard_error: of the paired difference flip - plain, sqrt(f + b) / images.
    """

    mode: str
    images: int
    plain_accuracy: float
    flip_accuracy: float
    standard_error: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class MirroredSample:
    """The seeded sample of validation images flip is checked on, and their mirror images'
    vectors (`mirrored_sample`: no head needed, so it can run while the head trains).

    Attributes:
        paths: the decodable validation images it was drawn from, in split order.
        rows: int [k] the sample's decodable images, as positions in `paths`.
        vectors: float32 [k, D] their mirror images' vectors.
    """

    paths: tuple[str | AnyPath, ...]
    rows: np.ndarray
    vectors: np.ndarray


def mirrored_sample(engine: Engine, paths: Sequence[str | AnyPath], seed: int,
                    bottleneck_dir: AnyPath, stop: Optional[threading.Event] = None,
                    decoded: Optional[Mapping[int, tuple[str, np.ndarray]]] = None
                    ) -> MirroredSample:
    """The mirror images' vectors of a seeded sample of up to SAMPLE_IMAGES of `paths` (the
    decodable validation images), through `engine` (the one the cached vectors come from);
    cached under `bottleneck_dir` too. Once `stop` is set, no further chunk is decoded (the
    images not reached are left out of the sample: for a run that has failed). `decoded`:
    {position in `paths`: (file digest, uint8 [H, W, 3] mirror image)} of images the bottleneck
    stage decoded (`compute_bottlenecks(mirrored=...)`): not read again."""
    rows = np.sort(np.random.default_rng(seed).permutation(len(paths))[:SAMPLE_IMAGES])
    known = decoded or {}
    mirrored, ok = _mirrored_vectors(engine, [paths[row] for row in rows], bottleneck_dir, stop,
                                     {index: known[row] for index, row in enumerate(rows)
                                      if row in known})
    return MirroredSample(tuple(paths), rows[ok], mirrored)


def choose_tta(head: Head, sample: MirroredSample, vectors: np.ndarray, labels: np.ndarray
               ) -> TtaChoice:
    """Check flip on `sample` (the module docstring).

    Args:
        head: the trained head (single-label).
        sample: `mirrored_sample` of the decodable validation images.
        vectors: float32 [len(sample.paths), D], their cached vectors.
        labels: int64 [len(sample.paths)] class indices.
    """
    if not sample.paths:
        return TtaChoice("none", 0, 0.0, 0.0, 0.0)
    rows = sample.rows
    plain = _correct(head, vectors[rows], labels[rows])
    flip = _correct(head, (vectors[rows] + sample.vectors) / 2, labels[rows])
    fixed, broken = int((flip & ~plain).sum()), int((plain & ~flip).sum())
    count = max(len(rows), 1)
    keep = len(rows) > 0 and broken - fixed <= np.sqrt(fixed + broken)
    error = float(np.sqrt(fixed + broken)) / count
    choice = TtaChoice("flip" if keep else "none", len(rows), plain.sum() / count,
                       flip.sum() / count, error)
    log.info("Flip test-time augmentation on %d validation images: %.1f%% -> %.1f%% "
             "(standard error %.1f points): %s.", choice.images, choice.plain_accuracy * 100,
             choice.flip_accuracy * 100, error * 100,
             "the exports average each image with its mirror image" if keep else "not used")
    return choice


def _mirrored_vectors(engine: Engine, paths: Sequence[str | AnyPath], bottleneck_dir: AnyPath,
                      stop: Optional[threading.Event],
                      decoded: Mapping[int, tuple[str, np.ndarray]]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [decoded, D] vectors of the mirrored images, bool [len(paths)] decoded): from the
    bottleneck cache (`layout.MIRRORED_SUBFOLDER`) where present, so a rerun decodes nothing;
    else from `decoded`'s mirror images ({index: (digest, pixels)}), or decoded a chunk at a
    time (2,000 images at 224 x 224 would hold 300 MB of pixels)."""
    cache = BottleneckCache(as_path(bottleneck_dir), engine.spec, namespace=MIRRORED_SUBFOLDER)
    keys = [decoded[index][0] if index in decoded else file_digest(path)
            for index, path in enumerate(paths)]
    vectors: list[Optional[np.ndarray]] = [cache.load(key) for key in keys]
    missing = [index for index, vector in enumerate(vectors) if vector is None]
    for start in range(0, len(missing), CHUNK):
        if stop is not None and stop.is_set():
            break
        chunk = missing[start:start + CHUNK]
        images = {index: decoded[index][1] for index in chunk if index in decoded}
        fresh = [index for index in chunk if index not in decoded]
        if fresh:
            pixels, ok = decode_files([paths[index] for index in fresh], engine.spec.input_size)
            images.update((index, image[:, ::-1]) for index, image, good in zip(fresh, pixels, ok)
                          if good)
        done = [index for index in chunk if index in images]
        if not done:
            continue
        computed = _vectors(engine, np.stack([images[index] for index in done]))
        cache.store_all([(keys[index], vector) for index, vector in zip(done, computed)])
        for index, vector in zip(done, computed):
            vectors[index] = vector
    found = np.array([vector is not None for vector in vectors], bool)
    rows = [vector for vector in vectors if vector is not None]
    return (np.stack(rows) if rows else np.zeros((0, engine.spec.vector_size), np.float32)), found


def _vectors(engine: Engine, pixels: np.ndarray) -> np.ndarray:
    """The engine's vectors of `pixels`, as one batch of `Engine.map`: on one interpreter of an
    int8 engine, leaving the other CPUs to the audit and the head fit beside it."""
    [(_, vectors)] = engine.map([pixels], lambda batch: batch)
    return vectors


def _correct(head: Head, vectors: np.ndarray, truth: np.ndarray) -> np.ndarray:
    probabilities = head.probabilities(vectors)
    return np.asarray(probabilities.argmax(axis=1) == truth)
