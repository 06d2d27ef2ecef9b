"""The feature-extractor interface every later stage uses, and nothing model-specific beyond it.

An extractor maps a float32 RGB batch [N, H, W, 3] with values in [0, 1] to bottleneck vectors
float32 [N, D]. Normalisation lives inside the extractor, so exported graphs take [0, 1] input like
every TF Hub image module. Extractors are `tf.Module`s so they can be traced into a `tf.function`,
frozen into a GraphDef and saved in a SavedModel together with a trained head.
"""

from __future__ import annotations

import hashlib

import tensorflow as tf

from retrainer.errors import UsageError
from retrainer.formats.extractor_spec import ExtractorSpec

__all__ = ["ExtractorSpec", "FeatureExtractor"]


class FeatureExtractor(tf.Module):
    """Base class: subclasses set `self.spec` and implement `__call__`."""

    spec: ExtractorSpec

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        """Compute bottleneck vectors.

        Args:
            images: float32 [N, H, W, 3], RGB in [0, 1], (H, W) == spec.input_size.

        Returns:
            float32 [N, D] with D == spec.vector_size.
        """
        raise NotImplementedError

    def weights_digest(self) -> str:
        """SHA-256 (hex) naming the weights as they are now, a part of the key of a model
        converted from them (the int8 engine's): by default of every variable's name and values.
        """
        weights = hashlib.sha256()
        for variable in self.variables:
            weights.update(variable.name.encode() + b"\0" + variable.numpy().tobytes())
        return weights.hexdigest()

    def fine_tunable_variables(self, blocks: int) -> tuple[tf.Variable, ...]:
        """The variables `--do_fine_tuning` trains: the top `blocks` blocks and the last layer.

        Args:
            blocks: how many blocks below the last layer to train (more than there are: all).

        Returns:
            The variables, trainable or not (fine-tuning updates them in place).

        Raises:
            UsageError: this extractor cannot be trained (the default).
        """
        raise UsageError(
            f"--do_fine_tuning: the feature extractor {self.spec.name!r} cannot be trained (it "
            "has no trainable weights). Drop --do_fine_tuning, or use a built-in "
            "efficientnet_lite*, a TF2 SavedModel with trainable variables or a keras: backbone."
        )
