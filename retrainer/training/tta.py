"""`--tta auto`: whether the exports should average each image with its mirror image.

Flip test-time augmentation runs the extractor on the image and on its mirror image and hands the
head the mean of both vectors: for subjects that look alike mirrored (clothes, animals, most
photos) the two views' errors partly cancel, for others (text, digits, left/right classes) the
mirror image is a different picture. So `auto` measures it on the validation split, never on the
test split: the mirror images of up to SAMPLE_IMAGES validation images go through the engine that
computed the cached vectors, and flip is kept only when it classifies more of them correctly than
the plain vectors by more than one standard error of the paired difference (a gain the split can
tell from chance). It then costs the exports one more pass of the extractor per image.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from retrainer.data.batches import decode_files
from retrainer.engines.base import Engine
from retrainer.io.storage import AnyPath
from retrainer.training.head import Head

log = logging.getLogger(__name__)

SAMPLE_IMAGES = 1000  # at most this many validation images are mirrored: one engine pass each


@dataclasses.dataclass(frozen=True)
class TtaChoice:
    """The measured choice: `flip` when it gained, else `none`.

    Attributes:
        mode: "flip" or "none".
        images: validation images measured (0: nothing to measure on).
        plain_accuracy: their accuracy on the plain vectors.
        flip_accuracy: on the mean of each image's and its mirror image's vectors.
        standard_error: of the paired difference flip - plain.
    """

    mode: str
    images: int
    plain_accuracy: float
    flip_accuracy: float
    standard_error: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def choose_tta(head: Head, engine: Engine, paths: Sequence[AnyPath], vectors: np.ndarray,
               labels: np.ndarray, seed: int) -> TtaChoice:
    """Measure flip on a seeded sample of the validation images (the module docstring).

    Args:
        head: the trained head (single-label).
        engine: the engine the cached vectors come from.
        paths: the decodable validation images.
        vectors: float32 [len(paths), D], their cached vectors.
        labels: int64 [len(paths)] class indices.
        seed: picks the sample.
    """
    if not len(paths):
        return TtaChoice("none", 0, 0.0, 0.0, 0.0)
    rows = np.sort(np.random.default_rng(seed).permutation(len(paths))[:SAMPLE_IMAGES])
    pixels, ok = decode_files([paths[row] for row in rows], engine.spec.input_size)
    mirrored = np.ascontiguousarray(pixels[ok][:, :, ::-1])
    batches = range(0, len(mirrored), max(engine.batch_size, 1))
    flipped = np.concatenate([engine(mirrored[start:start + engine.batch_size])
                              for start in batches]) if len(mirrored) else vectors[:0]
    rows, truth = rows[ok], labels[rows[ok]]
    plain = _correct(head, vectors[rows], truth)
    flip = _correct(head, (vectors[rows] + flipped) / 2, truth)
    difference = flip.astype(np.float64) - plain
    error = float(difference.std() / np.sqrt(len(difference))) if len(difference) else 0.0
    gained = len(difference) > 0 and float(difference.mean()) > error
    choice = TtaChoice("flip" if gained else "none", len(difference),
                       float(plain.mean()) if len(plain) else 0.0,
                       float(flip.mean()) if len(flip) else 0.0, error)
    log.info("Flip test-time augmentation on %d validation images: %.1f%% -> %.1f%% "
             "(standard error %.1f points): %s.", choice.images, choice.plain_accuracy * 100,
             choice.flip_accuracy * 100, error * 100,
             "the exports average each image with its mirror image" if gained else "not used")
    return choice


def _correct(head: Head, vectors: np.ndarray, truth: np.ndarray) -> np.ndarray:
    probabilities = head.probabilities(tf.constant(vectors, tf.float32)).numpy()
    return np.asarray(probabilities.argmax(axis=1) == truth)
