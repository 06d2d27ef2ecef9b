"""Measure which input normalisation, padding and batch-norm epsilon the Lite checkpoints expect.

    python -m benchmarks.measure_extractor_preprocessing [--model efficientnet_lite0 ...] [--smoke]

1. Normalisation, without any dataset: the stem's batch-norm running means were accumulated over
   ImageNet under the training normalisation, so the stem kernel applied to the ImageNet mean pixel
   (0.485, 0.456, 0.406), normalised the right way, must reproduce them.
2. Everything, on real photos shipped with scikit-image (5 photos x 12 views: squashed, centre
   crop, four 80% corner crops, each mirrored): top-1 and the log-probability of the photo's
   classes, for the chosen combination and each single change (padding, normalisation, epsilon),
   at the native size and at reduced sizes where borders (so padding) weigh more.
The alternatives are swapped into retrainer.extractors.efficientnet_lite one at a time, so the
production code path is what gets measured. About 1 minute per model on 2 cores.
"""

from __future__ import annotations

import io
import itertools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

import retrainer.extractors.efficientnet_lite as lite  # noqa: E402
from benchmarks import cli  # noqa: E402
from retrainer.data.decoding import decode_image  # noqa: E402
from retrainer.extractors._pth import read_state_dict  # noqa: E402

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# ILSVRC-2012 classes of each photo's subject.
PHOTOS = {
    "chelsea": {281, 282, 285},  # tabby, tiger cat, Egyptian cat
    "coffee": {967, 968, 504},  # espresso, cup, coffee mug
    "rocket": {657, 744, 812},  # missile, projectile, space shuttle
    "stereo_motorcycle": {665, 670},  # moped, motor scooter
    "camera": {872, 759},  # tripod, reflex camera
}
NORMALISATIONS = {
    "(x*255-127)/128": (lite.INPUT_MEAN, lite.INPUT_STD),
    "ImageNet mean/std": (IMAGENET_MEAN, IMAGENET_STD),
    "x in [0, 1]": (0.0, 1.0),
}


def stem_statistics(variant: lite.Variant) -> None:
    state = read_state_dict(lite.weights_path(variant))
    per_channel = state["_conv_stem.weight"].sum(axis=(2, 3))  # [32 out, 3 in]
    running_mean = state["_bn0.running_mean"]
    for label, (mean, std) in NORMALISATIONS.items():
        predicted = per_channel @ ((IMAGENET_MEAN - mean) / std)
        residual = np.sqrt(np.mean((predicted - running_mean) ** 2) / np.mean(running_mean**2))
        correlation = (np.corrcoef(predicted, running_mean)[0, 1] if predicted.std() > 0
                       else float("nan"))
        print(f"  stem running mean vs ImageNet mean pixel under {label:18s}: correlation "
              f"{correlation:6.3f}, relative residual {residual:.2f}")


def _views(pixels: np.ndarray, size: int) -> list[np.ndarray]:
    def encode(array: np.ndarray) -> np.ndarray:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
        return decode_image(buffer.getvalue(), (size, size))

    height, width = pixels.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    crops = [pixels, pixels[top:top + side, left:left + side]]
    crop_h, crop_w = int(height * 0.8), int(width * 0.8)
    crops += [pixels[y:y + crop_h, x:x + crop_w]
              for y, x in itertools.product((0, height - crop_h), (0, width - crop_w))]
    views = [encode(crop) for crop in crops]
    return views + [view[:, ::-1] for view in views]


def photo_batch(size: int) -> tuple[tf.Tensor, list[set[int]]]:
    images, truth = [], []
    for name, classes in PHOTOS.items():
        pixels = getattr(skimage.data, name)()
        pixels = pixels[0] if isinstance(pixels, tuple) else pixels
        pixels = np.stack([pixels] * 3, axis=-1) if pixels.ndim == 2 else pixels
        views = _views(pixels, size)
        images += views
        truth += [classes] * len(views)
    return tf.constant(np.stack(images), tf.float32) / 255.0, truth


def _symmetric(x: tf.Tensor, kernel: tf.Variable) -> tf.Tensor:
    half = kernel.shape[0] // 2
    return tf.pad(x, [[0, 0], [half, half], [half, half], [0, 0]])


def _conv_symmetric(x, kernel, bias, stride=1):
    return tf.nn.bias_add(tf.nn.conv2d(_symmetric(x, kernel), kernel, stride, "VALID"), bias)


def _depthwise_symmetric(x, kernel, bias, stride):
    return tf.nn.bias_add(
        tf.nn.depthwise_conv2d(_symmetric(x, kernel), kernel, (1, stride, stride, 1), "VALID"),
        bias)


def _log_p_true(variant: lite.Variant, size: int, images: tf.Tensor, truth: list[set[int]],
                padding: str, normalisation: str, epsilon: float) -> tuple[np.ndarray, float]:
    originals = lite._conv, lite._depthwise, lite._normalize, lite.BATCH_NORM_EPSILON
    mean, std = NORMALISATIONS[normalisation]
    try:
        if padding == "symmetric k//2":
            lite._conv, lite._depthwise = _conv_symmetric, _depthwise_symmetric
        lite._normalize = lambda x: (x - mean) / std
        lite.BATCH_NORM_EPSILON = epsilon
        extractor = lite.EfficientNetLite(variant, size)
        probabilities = tf.nn.softmax(tf.function(extractor.imagenet_logits)(images)).numpy()
    finally:
        lite._conv, lite._depthwise, lite._normalize, lite.BATCH_NORM_EPSILON = originals
    top1 = np.mean([int(np.argmax(row)) in classes for row, classes in zip(probabilities, truth)])
    return np.log([row[sorted(classes)].sum() for row, classes in zip(probabilities, truth)]), top1


def photo_measurements(variant: lite.Variant, sizes: tuple[int, ...]) -> None:
    chosen = ("TF SAME", "(x*255-127)/128", 1e-3)
    changes = [("symmetric k//2", chosen[1], chosen[2]),
               ("TF SAME", "ImageNet mean/std", chosen[2]),
               ("TF SAME", chosen[1], 1e-5)]
    for size in sizes or (variant.image_size, 128, 96):
        images, truth = photo_batch(size)
        reference, top1 = _log_p_true(variant, size, images, truth, *chosen)
        print(f"  {size}px, {len(truth)} views: chosen {chosen}: top-1 {top1:.2f}, "
              f"mean log p(true classes) {reference.mean():.3f}")
        for change in changes if size == variant.image_size else changes[:1]:
            log_p, top1 = _log_p_true(variant, size, images, truth, *change)
            print(f"    {str(change):44s} top-1 {top1:.2f}, mean log p {log_p.mean():.3f}; "
                  f"chosen better on {np.mean(reference > log_p):.0%} of views, "
                  f"by {np.mean(reference - log_p):+.3f} nats")


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--model", nargs="+", default=sorted(lite.VARIANTS),
                        choices=sorted(lite.VARIANTS))
    parser.add_argument("--sizes", type=int, nargs="*", default=(),
                        help="input sizes measured (default: the model's, 128 and 96)")
    args = cli.parse(parser, {"model": ["efficientnet_lite0"], "sizes": (96,)})
    for name in args.model:
        print(name)
        stem_statistics(lite.VARIANTS[name])
        photo_measurements(lite.VARIANTS[name], tuple(args.sizes))


if __name__ == "__main__":
    main()
