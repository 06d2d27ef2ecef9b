"""SavedModel export: the `Classifier` behind two signatures, labels and metadata as assets.

- `serving_default`: images float32 [N, H, W, 3] RGB in [0, 1] -> {"probabilities": [N, C]}.
- `serving_bytes`: image_bytes string [N] of encoded JPEG/PNG/GIF/BMP files -> {"probabilities":
  float32 [N, C], "label": string [N] (the top class), "score": float32 [N]}. A multi-label model
  returns instead "labels": string [N, C], the labels over their thresholds best first, padded
  with "", and "scores": float32 [N, C] beside them (0 where padded).
- With a novelty score, both signatures also return "novelty": float32 [N], and `serving_bytes`
  "unknown": bool [N] (novelty above its threshold). `assets/metadata.json` holds what the graph's
  `.meta.json` holds (thresholds, the novelty threshold). Decoding and resizing
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

from retrainer.exports.classifier import Classifier
from retrainer.formats.graph_contract import NOVELTY_OUTPUT, SAVED_MODEL_METADATA, write_labels
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

    if classifier.thresholds is not None:
        module.thresholds = tf.Variable(classifier.thresholds, trainable=False, name="thresholds")
    if classifier.novelty is not None:
        module.novelty_threshold = tf.Variable(classifier.novelty.threshold, trainable=False,
                                               name="novelty_threshold", dtype=tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, "images")])
    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = classifier.outputs(images)
        return {SIGNATURE_OUTPUT: outputs["probabilities"],
                **({NOVELTY_OUTPUT: outputs[NOVELTY_OUTPUT]} if NOVELTY_OUTPUT in outputs else {})}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, BYTES_INPUT)])
    def serve_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.map_fn(
            lambda data: _decode_and_resize(data, height, width), image_bytes,
            fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32),
        )
        outputs = classifier.outputs(images)
        probabilities = outputs["probabilities"]
        result = {SIGNATURE_OUTPUT: probabilities}
        if classifier.thresholds is None:
            result["label"] = tf.gather(module.labels, tf.argmax(probabilities, axis=1))
            result["score"] = tf.reduce_max(probabilities, axis=1)
        else:
            result.update(_labels_over_thresholds(probabilities, module.labels, module.thresholds))
        if NOVELTY_OUTPUT in outputs:
            result[NOVELTY_OUTPUT] = outputs[NOVELTY_OUTPUT]
            result["unknown"] = outputs[NOVELTY_OUTPUT] > module.novelty_threshold
        return result

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


def _labels_over_thresholds(probabilities: tf.Tensor, labels: tf.Variable,
                            thresholds: tf.Variable) -> dict[str, tf.Tensor]:
    """Multi-label answer: per image, the labels at or over their thresholds, best first.

    Returns:
        {"labels": string [N, C] padded with "", "scores": float32 [N, C] padded with 0}.
    """
    over = probabilities >= thresholds
    order = tf.argsort(tf.where(over, probabilities, -1.0), axis=1, direction="DESCENDING")
    kept = tf.gather(over, order, batch_dims=1)
    return {
        "labels": tf.where(kept, tf.gather(labels, order), ""),
        "scores": tf.where(kept, tf.gather(probabilities, order, batch_dims=1), 0.0),
    }


def _decode_and_resize(data: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """One encoded image -> float32 [H, W, 3] RGB in [0, 1] (first frame of a GIF)."""
    pixels = tf.io.decode_image(data, channels=3, expand_animations=False)
    pixels.set_shape([None, None, 3])
    resized = tf.image.resize(tf.cast(pixels, tf.float32), [height, width], antialias=True)
    return tf.clip_by_value(resized, 0.0, 255.0) / 255.0
