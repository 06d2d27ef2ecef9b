"""SavedModel export: the `Classifier` behind a `serving_default` signature, labels as an asset."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import tensorflow as tf

from retrainer._files import replace_directory
from retrainer.exports.classifier import Classifier, write_labels

SIGNATURE_OUTPUT = "probabilities"


def write_saved_model(classifier: Classifier, directory: os.PathLike[str] | str) -> None:
    """A SavedModel whose `serving_default` signature maps images to probabilities.

    Signature: images float32 [N, H, W, 3] RGB in [0, 1] -> {"probabilities": float32 [N, C]}.
    The labels are saved as `assets/labels.txt` and as the string variable `labels`. The directory
    is built beside `directory` and swapped into place.
    """
    module = tf.Module()
    module.classifier = classifier
    module.labels = tf.Variable(list(classifier.label_names), trainable=False, name="labels")
    height, width = classifier.extractor.spec.input_size

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, "images")])
    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return {SIGNATURE_OUTPUT: classifier.classify(images)}

    module.serve = serve
    with tempfile.TemporaryDirectory() as scratch:
        labels_file = Path(scratch) / "labels.txt"
        write_labels(labels_file, classifier.label_names)
        module.labels_file = tf.saved_model.Asset(str(labels_file))
        replace_directory(
            directory,
            lambda staging: tf.saved_model.save(
                module, str(staging), signatures={"serving_default": serve}
            ),
        )
