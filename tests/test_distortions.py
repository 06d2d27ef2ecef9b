"""Distortions: retrain.py's math, seeding, and the cache of distorted variants."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from retrainer.cache.bottlenecks import compute_bottlenecks
from retrainer.training.distorted_bottlenecks import compute_distorted_bottlenecks
from retrainer.training.distortion_ops import distort_images
from retrainer.training.distortions import Distortions, image_seeds
from tests.fixtures_data import make_color_image_dir

SIZE = 16


def images(count: int = 8) -> np.ndarray:
    return np.random.default_rng(0).random((count, SIZE, SIZE, 3)).astype(np.float32)


def distort(pixels: np.ndarray, distortions: Distortions, draw: str = "a") -> np.ndarray:
    seeds = image_seeds([f"{index:064x}" for index in range(len(pixels))], 0, draw)
    return distort_images(tf.constant(pixels), tf.constant(seeds), distortions).numpy()


def legacy_resize(image: np.ndarray, size: int) -> np.ndarray:
    """retrain.py's tf.image.resize_bilinear (TF1 corner alignment)."""
    return tf.raw_ops.ResizeBilinear(images=image[np.newaxis], size=[size, size],
                                     align_corners=False, half_pixel_centers=False)[0].numpy()


def windows(image: np.ndarray) -> list[np.ndarray]:
    side = image.shape[0]
    return [image[top:top + SIZE, left:left + SIZE]
            for top in range(side - SIZE + 1) for left in range(side - SIZE + 1)]


def test_all_off_is_the_identity():
    pixels = images()
    np.testing.assert_allclose(distort(pixels, Distortions()), pixels, atol=1e-6)


def test_shapes_ranges_and_seeds():
    pixels = images()
    settings = Distortions(flip_left_right=True, random_crop=20, random_scale=30)
    first = distort(pixels, settings)
    assert first.shape == pixels.shape and first.dtype == np.float32
    assert first.min() >= 0 and first.max() <= 1  # no brightness: interpolation stays in range
    np.testing.assert_array_equal(distort(pixels, settings), first)  # same seeds, same variants
    assert not np.allclose(distort(pixels, settings, draw="b"), first)  # another draw differs
    seeds = image_seeds([f"{3:064x}"], 0, "a")  # an image's variant does not depend on its batch
    alone = distort_images(tf.constant(pixels[3:4]), tf.constant(seeds), settings).numpy()
    np.testing.assert_allclose(alone[0], first[3], atol=1e-6)


def test_crop_is_a_window_of_the_enlarged_image():
    """random_crop 25: resize to int(16 * 1.25) = 20 (retrain.py's bilinear), crop a 16x16 window."""
    pixels = images(4)
    for image, result in zip(pixels, distort(pixels, Distortions(random_crop=25))):
        assert any(np.allclose(window, result, atol=1e-6)
                   for window in windows(legacy_resize(image, 20)))


def test_scale_draws_the_size_from_one_to_one_plus_scale():
    """random_scale 50 (crop 0): the precrop side is int(16 * s), s in [1, 1.5)."""
    pixels = images(6)
    sizes = []
    for image, result in zip(pixels, distort(pixels, Distortions(random_scale=50))):
        matches = [side for side in range(SIZE, 24)
                   if any(np.allclose(window, result, atol=1e-6)
                          for window in windows(legacy_resize(image, side)))]
        assert matches, "not a window of any enlargement in [1, 1.5)"
        sizes.append(matches[0])
    assert len(set(sizes)) > 1


def test_flip_mirrors_about_half_and_brightness_multiplies_without_clipping():
    pixels = images(64)
    flipped = distort(pixels, Distortions(flip_left_right=True))
    mirrored = [np.allclose(out, image[:, ::-1]) for out, image in zip(flipped, pixels)]
    assert all(m or np.allclose(out, image) for m, out, image in zip(mirrored, flipped, pixels))
    assert 16 <= sum(mirrored) <= 48
    ones = np.ones((64, SIZE, SIZE, 3), np.float32)
    factors = distort(ones, Distortions(random_brightness=50))[:, 0, 0, 0]
    assert np.all((factors >= 0.5) & (factors < 1.5))
    assert factors.max() > 1.2  # above 1: not clipped, as in retrain.py
    brightened = distort(pixels, Distortions(random_brightness=50))
    np.testing.assert_allclose(brightened, pixels * factors[:, None, None, None], rtol=1e-6)


@pytest.fixture
def training_images(tmp_path: Path) -> list[Path]:
    root = make_color_image_dir(tmp_path / "images", per_class=3)
    return sorted(root.glob("*/*.png"))


BASE = Distortions(flip_left_right=True, random_crop=10, random_scale=10, random_brightness=10)


def test_same_flags_reuse_the_cache_and_any_change_computes_new_vectors(
        tiny_extractor, training_images, tmp_path):
    cache = tmp_path / "cache"

    def run(distortions=BASE, variants=2, seed=0):
        return compute_distorted_bottlenecks(training_images, tiny_extractor, cache, distortions,
                                             variants, seed, show_progress=False)

    first = run()
    count = len(training_images)
    assert (first.computed, first.reused) == (2 * count, 0) and first.ok.all()
    assert first.vectors.shape == (count, 2, 16)
    assert not np.allclose(first.vectors[:, 0], first.vectors[:, 1])  # variants differ
    plain = compute_bottlenecks(training_images, tiny_extractor, tmp_path / "plain",
                                show_progress=False)
    assert not np.allclose(first.vectors[:, 0], plain.vectors)
    again = run()
    assert (again.computed, again.reused) == (0, 2 * count)
    np.testing.assert_array_equal(again.vectors, first.vectors)
    changes = [dataclasses.replace(BASE, flip_left_right=False),
               dataclasses.replace(BASE, random_crop=20),
               dataclasses.replace(BASE, random_scale=20),
               dataclasses.replace(BASE, random_brightness=20)]
    for changed in changes:
        other = run(changed)
        assert (other.computed, other.reused) == (2 * count, 0), changed
        assert not np.allclose(other.vectors, first.vectors), changed
    reseeded = run(seed=1)
    assert reseeded.computed == 2 * count and not np.allclose(reseeded.vectors, first.vectors)
    more = run(variants=3)  # variant i is the same vector whatever the variant count
    np.testing.assert_allclose(more.vectors[:, :2], first.vectors, rtol=1e-5, atol=1e-6)
    entries = sorted(path.name for path in (cache / tiny_extractor.spec.id).rglob("*.npy"))
    assert entries and all("-v" in name for name in entries)
