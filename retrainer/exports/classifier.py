"""What every export contains: the extractor and the trained head as one function of images.

`Classifier.classify` maps float32 [N, H, W, 3] RGB in [0, 1] (the extractor's own normalisation is
inside) to probabilities float32 [N, C] under the op name `final_tensor_name` (softmax, or one
sigmoid per label for a multi-label head); `Classifier.outputs` adds the novelty score float32 [N]
under the op name `novelty` when the run fitted one. `Classifier.metadata` is the `.meta.json`
contract that lets `label-image` run without flags.
"""

from __future__ import annotations

import hashlib
from typing import Any, Optional, Sequence

import tensorflow as tf

from retrainer.exports.kept import classifier_metadata
from retrainer.exports.options import FLIP, NO_TTA
from retrainer.extractors import FeatureExtractor
from retrainer.formats.graph_contract import INPUT_OP, NOVELTY_OUTPUT
from retrainer.training.head_layer import HeadLayer
from retrainer.training.head_types import Head
from retrainer.training.novelty import Novelty


class Classifier(tf.Module):
    """Extractor + head as one function of images: what every export contains."""

    def __init__(
        self,
        extractor: FeatureExtractor,
        head: Head,
        labels: Sequence[str],
        final_tensor_name: str,
        novelty: Optional[Novelty] = None,
        thresholds: Optional[Sequence[float]] = None,
        tta: str = NO_TTA,
    ) -> None:
        """`tta`: FLIP = the head reads the mean of each image's and its mirror image's vectors."""
        super().__init__(name="retrained_classifier")
        self.extractor = extractor
        self.head = HeadLayer(head)  # its variables freeze into the graph
        self.final_tensor_name = final_tensor_name
        self.label_names = tuple(labels)
        self.fine_tuned = False  # set once fine-tuning changed the extractor's weights
        self.novelty = novelty
        self.thresholds = None if thresholds is None else [float(t) for t in thresholds]
        if novelty is not None:  # constants once frozen; a variable keeps the SavedModel small
            self.novelty_references = tf.Variable(novelty.references, trainable=False,
                                                  name="novelty_references")
        self.tta = tta
        height, width = extractor.spec.input_size
        signature = [tf.TensorSpec([None, height, width, 3], tf.float32, name=INPUT_OP)]
        # No Python control flow on tensors: no AutoGraph (its conversion took 0.7 s).
        self.classify = tf.function(self._classify, input_signature=signature, autograph=False)
        self.outputs = tf.function(self._outputs, input_signature=signature, autograph=False)

    @property
    def multi_label(self) -> bool:
        return self.thresholds is not None

    def _digest(self) -> str:
        """First 12 hex digits of the SHA-256 of the extractor's weights: names a tuned copy."""
        digest = hashlib.sha256()
        for variable in self.extractor.variables:
            digest.update(variable.numpy().tobytes())
        return digest.hexdigest()[:12]

    def _classify(self, images: tf.Tensor) -> tf.Tensor:
        """float32 [N, H, W, 3] RGB in [0, 1] -> float32 [N, C] probabilities."""
        return self._probabilities(self._vectors(images)[1])

    def _vectors(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(the images' own vectors, what the head reads): with --tta flip the head reads the
        mean of each image's and its mirror image's (one batch of 2N through the extractor);
        the novelty score keeps the image's own, which its threshold was calibrated on."""
        if self.tta != FLIP:
            features = self.extractor(images)
            return features, features
        with tf.name_scope("tta_flip"):  # slices, not ReverseV2: ops every model already holds
            both = self.extractor(tf.concat([images, images[:, :, ::-1]], 0))
            count = tf.shape(images)[0]
            own = both[:count]
            return own, (own + both[count:]) * 0.5

    def _probabilities(self, features: tf.Tensor) -> tf.Tensor:
        with tf.name_scope("final_retrain_ops"):
            probabilities = self.head.probabilities(features)
        return tf.identity(probabilities, name=self.final_tensor_name)

    def _outputs(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """{"probabilities": float32 [N, C], "novelty": float32 [N] (when fitted)}."""
        features, head_input = self._vectors(images)
        outputs = {"probabilities": self._probabilities(head_input)}
        if self.novelty is not None:
            with tf.name_scope("novelty_ops"):
                score = novelty_scores(features, self.novelty_references, self.novelty.k)
            outputs[NOVELTY_OUTPUT] = tf.identity(score, name=NOVELTY_OUTPUT)
        return outputs

    def metadata(self, step: Optional[int] = None) -> dict[str, Any]:
        """The `<graph>.meta.json` contract (`exports.kept.classifier_metadata`)."""
        return classifier_metadata(self.extractor.spec, self.label_names, self.final_tensor_name,
                                   self.tta, self.thresholds, self.novelty, step,
                                   self._digest() if self.fine_tuned else None)


def novelty_scores(features: tf.Tensor, references: tf.Tensor, k: int) -> tf.Tensor:
    """The novelty score in TensorFlow ops (`Novelty.scores` in numpy): float32 [N, D] vectors
    and [M, D] unit reference rows -> float32 [N] cosine distance to the k-th nearest."""
    unit = tf.math.l2_normalize(features, axis=1, epsilon=1e-24)
    similarity = tf.matmul(unit, references, transpose_b=True)
    kth = tf.math.top_k(similarity, k=k).values[:, k - 1]
    return 1.0 - kth
