"""SavedModel export: the `Classifier` behind two signatures, labels as an asset.

- `serving_default`: images float32 [N, H, W, 3] RGB in [0, 1] -> {"probabilities": [N, C]}.
- `serving_bytes`: image_bytes string [N] of encoded JPEG/PNG/GIF/BMP files -> {"probabilities":
  float32 [N, C], "label": string [N] (the top class), "score": float32 [N]}. Decoding and resizing
  happen in the graph, so TF Serving clients send files as they are: over REST,
  `{"signature_name": "serving_bytes", "instances": [{"b64": "<base64 of the file>"}]}`.
  TensorFlow's decoder and bilinear resize (antialiased) stand in for Pillow's, so scores differ
  slightly from label-image's (docs/exports.md has the measured agreement).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import tensorflow as tf

from retrainer.exports.classifier import Classifier, write_labels
from retrainer.formats.graph_contract import SAVED_MODEL_METADATA
from retrainer.io.atomic import replace_directory

SIGNATURE_OUTPUT = "probabilities"
BYTES_SIGNATURE = "serving_bytes"
BYTES_INPUT = "image_bytes"  # the "_bytes" suffix makes Cloud ML / TF Serving clients base64 it


def write_saved_model(classifier: Classifier, directory: os.PathLike[str] | str) -> None:
    """A SavedModel with the `serving_default` and `serving_bytes` signatures (module docstring).

    The labels are saved as `assets/labels.txt` and as the string variable `labels`, the
    `.meta.json` contract (extractor, input size, labels) as `assets/metadata.json`. The directory
    is built beside `directory` and swapped into place.
    """
    module = tf.Module()
    module.classifier = classifier
    module.labels = tf.Variable(list(classifier.label_names), trainable=False, name="labels")
    height, width = classifier.extractor.spec.input_size

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, "images")])
    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return {SIGNATURE_OUTPUT: classifier.classify(images)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, BYTES_INPUT)])
    def serve_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.map_fn(
            lambda data: _decode_and_resize(data, height, width), image_bytes,
            fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32),
        )
        probabilities = classifier.classify(images)
        best = tf.argmax(probabilities, axis=1)
        return {
            SIGNATURE_OUTPUT: probabilities,
            "label": tf.gather(module.labels, best),
            "score": tf.reduce_max(probabilities, axis=1),
        }

    module.serve = serve
    module.serve_bytes = serve_bytes
    with tempfile.TemporaryDirectory() as scratch:
        labels_file = Path(scratch) / "labels.txt"
        write_labels(labels_file, classifier.label_names)
        module.labels_file = tf.saved_model.Asset(str(labels_file))
        metadata_file = Path(scratch) / SAVED_MODEL_METADATA
        metadata_file.write_text(json.dumps(classifier.metadata(), indent=2, ensure_ascii=False)
                                 + "\n", encoding="utf-8")
        module.metadata_file = tf.saved_model.Asset(str(metadata_file))
        replace_directory(
            directory,
            lambda staging: tf.saved_model.save(
                module, str(staging),
                signatures={"serving_default": serve, BYTES_SIGNATURE: serve_bytes},
            ),
        )


def _decode_and_resize(data: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """One encoded image -> float32 [H, W, 3] RGB in [0, 1] (first frame of a GIF)."""
    pixels = tf.io.decode_image(data, channels=3, expand_animations=False)
    pixels.set_shape([None, None, 3])
    resized = tf.image.resize(tf.cast(pixels, tf.float32), [height, width], antialias=True)
    return tf.clip_by_value(resized, 0.0, 255.0) / 255.0
