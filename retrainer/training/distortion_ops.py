"""retrain.py's image distortions as seeded (stateless) TensorFlow ops on decoded [0, 1] images
(training/distortions.py says what each does and holds the settings)."""

from __future__ import annotations

import tensorflow as tf

from retrainer.training.distortions import Distortions


def distort_images(images: tf.Tensor, seeds: tf.Tensor, distortions: Distortions) -> tf.Tensor:
    """Apply the distortions to each image with its own seed.

    Args:
        images: float32 [N, H, W, 3], RGB in [0, 1], static H and W.
        seeds: int64 [N, 2], e.g. from `image_seeds`.
        distortions: which distortions, how strong.

    Returns:
        float32 [N, H, W, 3]; values in [0, 1] times the brightness factor (never clipped).
    """
    height, width = int(images.shape[1]), int(images.shape[2])

    def distort_one(arguments: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
        image, seed = arguments
        return _distort_one(image, seed, distortions, height, width)

    return tf.map_fn(distort_one, (images, seeds),
                     fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32))


def _distort_one(image: tf.Tensor, seed: tf.Tensor, distortions: Distortions, height: int,
                 width: int) -> tf.Tensor:
    scale_seed, crop_seed, flip_seed, brightness_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=4)
    )
    margin = 1.0 + distortions.random_crop / 100.0
    resize = tf.random.stateless_uniform(
        [], scale_seed, minval=1.0, maxval=1.0 + distortions.random_scale / 100.0
    )
    scale = margin * resize
    precrop = tf.cast(scale * tf.constant([height, width], tf.float32), tf.int32)
    # retrain.py's tf.image.resize_bilinear (TF1 corner alignment), not TF2's half-pixel resize.
    resized = tf.raw_ops.ResizeBilinear(images=image[tf.newaxis], size=precrop,
                                        align_corners=False, half_pixel_centers=False)[0]
    cropped = tf.image.stateless_random_crop(resized, [height, width, 3], crop_seed)
    if distortions.flip_left_right:
        cropped = tf.image.stateless_random_flip_left_right(cropped, flip_seed)
    brightness = distortions.random_brightness / 100.0
    factor = tf.random.stateless_uniform(
        [], brightness_seed, minval=1.0 - brightness, maxval=1.0 + brightness
    )
    return cropped * factor
