"""Distorted training vectors: a fixed number of seeded distorted variants per image, cached.

retrain.py distorted every image afresh at every step, one image at a time and uncached, so a
distorted run took hours (tensorflow/tensorflow#1882). Here each training image gets `variants`
distorted versions, drawn once from a seed derived from (image digest, --seed, variant index),
computed in batches through the same decode pipeline and extractor as the plain vectors, and cached
next to them: `<extractor namespace>/distorted/<settings>-seed<S>/<aa>/<digest>-v<i>.npy`. So the
key holds everything that changes a vector (extractor id, image content, the four distortion
settings and the format of their math, seed, variant index): changing any flag gives new vectors,
rerunning with the same flags reads them all back, and variant i is the same vector whatever the
variant count.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Sequence

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from retrainer.cache.bottlenecks import DEFAULT_BATCH_SIZE
from retrainer.cache.entries import BottleneckCache
from retrainer.cache.layout import distorted_subfolder
from retrainer.data.batches import decoded_images, file_digest
from retrainer.extractors import FeatureExtractor
from retrainer.io.storage import as_path
from retrainer.training.distortion_ops import distort_images
from retrainer.training.distortions import Distortions, image_seeds
from retrainer.training.out_of_memory import explains_out_of_memory

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistortedBottlenecks:
    """Distorted vectors of a list of images, in the order asked for.

    Attributes:
        vectors: float32 [N, V, D]; rows of unreadable files are zeros.
        ok: bool [N], False for files that could not be read or decoded.
        computed: variant vectors computed in this call.
        reused: variant vectors read from the cache.
        seconds: wall time of the call.
    """

    vectors: np.ndarray
    ok: np.ndarray
    computed: int
    reused: int
    seconds: float


def distorted_cache(bottleneck_dir: os.PathLike[str] | str, extractor: FeatureExtractor,
                    distortions: Distortions, seed: int) -> BottleneckCache:
    """The cache folder of one extractor's vectors under these distortion settings and seed."""
    return BottleneckCache(as_path(bottleneck_dir), extractor.spec,
                           namespace=distorted_subfolder(distortions.key, seed))


def compute_distorted_bottlenecks(
    paths: Sequence[os.PathLike[str] | str],
    extractor: FeatureExtractor,
    bottleneck_dir: os.PathLike[str] | str,
    distortions: Distortions,
    variants: int,
    seed: int,
    show_progress: bool = True,
) -> DistortedBottlenecks:
    """`variants` distorted vectors per image: from the cache where present, else computed.

    Args:
        paths: training image files.
        extractor: the feature extractor (its spec.id names the cache namespace).
        bottleneck_dir: the cache root shared with the plain vectors.
        distortions: retrain.py's distortion settings (at least one on).
        variants: V >= 1, distorted versions per image.
        seed: the run's --seed.
        show_progress: tqdm bar on stderr (only when it is a terminal).

    Returns:
        DistortedBottlenecks aligned with `paths`.

    Raises:
        UsageError: the accelerator ran out of memory.
    """
    started = time.perf_counter()
    cache = distorted_cache(bottleneck_dir, extractor, distortions, seed)
    vectors = np.zeros((len(paths), variants, extractor.spec.vector_size), np.float32)
    ok = np.zeros(len(paths), bool)
    missing: list[int] = []
    reused = 0
    for position, path in enumerate(paths):
        try:
            digest = file_digest(path)
        except OSError:
            continue  # the plain pass has already warned about it
        found = [cache.load(f"{digest}-v{index}") for index in range(variants)]
        cached = [vector for vector in found if vector is not None]
        reused += len(cached)
        if len(cached) == variants:
            vectors[position], ok[position] = np.stack(cached), True
        else:
            missing.append(position)
    computed = 0
    if missing:
        log.info("Computing %d distorted variants of %d training images (%s).",
                 variants, len(missing), distortions.key)
        with explains_out_of_memory("computing distorted bottleneck vectors",
                                    "lower --distorted_variants"):
            computed = _compute(paths, missing, extractor, cache, distortions, variants, seed,
                                vectors, ok, show_progress)
    return DistortedBottlenecks(vectors, ok, computed, reused, time.perf_counter() - started)


def _compute(paths: Sequence[os.PathLike[str] | str], missing: list[int],
             extractor: FeatureExtractor, cache: BottleneckCache,
             distortions: Distortions, variants: int, seed: int, vectors: np.ndarray,
             ok: np.ndarray, show_progress: bool) -> int:
    """Fill `vectors`/`ok` for the `missing` positions; returns the variant vectors computed."""
    height, width = extractor.spec.input_size

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8),
                                  tf.TensorSpec([None, 2], tf.int64)])
    def features(images: tf.Tensor, seeds: tf.Tensor) -> tf.Tensor:
        repeated = tf.repeat(tf.cast(images, tf.float32) / 255.0, variants, axis=0)
        return extractor(distort_images(repeated, seeds, distortions))

    # About DEFAULT_BATCH_SIZE images per extractor call, whatever the variant count.
    dataset = decoded_images([paths[position] for position in missing], (height, width),
                             max(1, DEFAULT_BATCH_SIZE // variants))
    computed = 0
    with tqdm(total=len(missing), unit="img", desc="Distorted bottlenecks", dynamic_ncols=True,
              disable=None if show_progress else True) as progress:
        for positions, images, digests, reasons in dataset:
            digests = [digest.decode() for digest in digests.numpy()]
            seeds = np.concatenate([image_seeds([digest], seed, f"variant{index}")
                                    for digest in digests for index in range(variants)])
            batch = features(images, tf.constant(seeds)).numpy().reshape(len(digests), variants, -1)
            entries = []
            for row, (index, digest, reason) in enumerate(
                    zip(positions.numpy(), digests, reasons.numpy())):
                if reason:
                    continue
                entries += [(f"{digest}-v{variant}", batch[row, variant])
                            for variant in range(variants)]
                vectors[missing[index]], ok[missing[index]] = batch[row], True
                computed += variants
            cache.store_all(entries)
            progress.update(len(digests))
    return computed
