"""What every export contains: the extractor and the trained head as one function of images.

`Classifier.classify` maps float32 [N, H, W, 3] RGB in [0, 1] (the extractor's own normalisation is
inside) to softmax probabilities float32 [N, C] under the op name `final_tensor_name`;
`Classifier.metadata` is the `.meta.json` contract that lets `label-image` run without flags.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Optional, Sequence

import tensorflow as tf

from retrainer.extractors import FeatureExtractor
from retrainer.formats.graph_contract import GRAPH_FORMAT, INPUT_MEAN, INPUT_OP, INPUT_STD
from retrainer.io.atomic import write_text_atomically
from retrainer.training.head import Head


def write_labels(path: os.PathLike[str] | str, labels: Sequence[str]) -> None:
    """One label per line in class-index order, trailing newline."""
    write_text_atomically(path, "".join(f"{label}\n" for label in labels))


class Classifier(tf.Module):
    """Extractor + head as one function of images: what every export contains."""

    def __init__(
        self,
        extractor: FeatureExtractor,
        head: Head,
        labels: Sequence[str],
        final_tensor_name: str,
    ) -> None:
        super().__init__(name="retrained_classifier")
        self.extractor = extractor
        self.head = head
        self.final_tensor_name = final_tensor_name
        self.label_names = tuple(labels)
        self.fine_tuned = False  # set once fine-tuning changed the extractor's weights
        height, width = extractor.spec.input_size
        self.classify = tf.function(  # no Python control flow on tensors: no AutoGraph (0.7 s)
            self._classify,
            input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, name=INPUT_OP)],
            autograph=False,
        )

    def _digest(self) -> str:
        """First 12 hex digits of the SHA-256 of the extractor's weights: names a tuned copy."""
        digest = hashlib.sha256()
        for variable in self.extractor.variables:
            digest.update(variable.numpy().tobytes())
        return digest.hexdigest()[:12]

    def _classify(self, images: tf.Tensor) -> tf.Tensor:
        """float32 [N, H, W, 3] RGB in [0, 1] -> float32 [N, C] probabilities."""
        features = self.extractor(images)
        with tf.name_scope("final_retrain_ops"):
            probabilities = self.head.probabilities(features)
        return tf.identity(probabilities, name=self.final_tensor_name)

    def metadata(self, step: Optional[int] = None) -> dict[str, Any]:
        """The `<graph>.meta.json` contract (see docs/retrain.md)."""
        spec = self.extractor.spec
        height, width = spec.input_size
        document = {
            "format": GRAPH_FORMAT,
            "input_layer": INPUT_OP,
            "output_layer": self.final_tensor_name,
            "input_height": height,
            "input_width": width,
            "input_mean": INPUT_MEAN,
            "input_std": INPUT_STD,
            "labels": list(self.label_names),
            "extractor": {"name": spec.name, "id": spec.id},
        }
        if self.fine_tuned:  # its vectors are no longer those of spec.id's cache namespace
            document["extractor"] = {"name": spec.name, "id": f"{spec.id}-tuned-{self._digest()}",
                                     "fine_tuned_from": spec.id}
        if step is not None:
            document["step"] = step
        return document
