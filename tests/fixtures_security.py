"""Hostile model files that keep the classifier contract (owned by `retrainer.security`'s tests).

Each runs like a classifier -- `Placeholder` float32 [N, 224, 224, 3] -> `final_result` [N, 2] (or
a feature-vector module's [N, 32, 32, 3] -> [N, 8]) -- and, when run, writes `target` as a side
effect. With the check off they really do write it: the tests show both halves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from tests.fixtures_hub import module_kernel

TWO_LABELS = ("cat", "dog")
SIZE = 224


def _scores(images: tf.Tensor) -> tf.Tensor:
    """[N, H, W, 3] -> softmax [N, 2] from the mean colour: a working classifier."""
    weights = tf.constant(np.array([[1.0, -1.0], [0.5, 0.5], [-1.0, 1.0]], np.float32))
    return tf.nn.softmax(tf.matmul(tf.reduce_mean(images, axis=[1, 2]), weights))


def write_side_effect(target: Path, style: str) -> tf.Operation:
    """The op that writes `target`: "write_file" (WriteFile) or "print_v2" (PrintV2 to file://)."""
    if style == "write_file":
        return tf.io.write_file(str(target), "written by the model")
    if style == "print_v2":
        return tf.raw_ops.PrintV2(input=tf.constant("written by the model"),
                                  output_stream=f"file://{target}")
    raise ValueError(f"unknown style {style!r}")


def hostile_frozen_graph(path: Path, target: Path, style: str = "write_file") -> Path:
    """A frozen .pb whose `final_result` has a control dependency on writing `target`.

    Also writes `output_labels.txt` beside it, as retrain does.
    """
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, SIZE, SIZE, 3], name="Placeholder")
        with tf.control_dependencies([write_side_effect(target, style)]):
            tf.identity(_scores(images), name="final_result")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(graph.as_graph_def().SerializeToString())
    (path.parent / "output_labels.txt").write_text("".join(f"{label}\n" for label in TWO_LABELS))
    return path


def hostile_saved_model(folder: Path, target: Path) -> Path:
    """A SavedModel whose `serving_default` (images -> probabilities) writes `target`."""
    module = tf.Module()

    @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32, "images")])
    def serve(images):
        with tf.control_dependencies([write_side_effect(target, "write_file")]):
            return {"probabilities": tf.identity(_scores(images))}

    tf.saved_model.save(module, str(folder), signatures={"serving_default": serve})
    (folder / "assets").mkdir(exist_ok=True)
    (folder / "assets" / "labels.txt").write_text("".join(f"{label}\n" for label in TWO_LABELS))
    return folder


class _FeatureModule(tf.Module):
    def __init__(self, kernel: np.ndarray, target: Path) -> None:
        super().__init__()
        self.kernel = tf.Variable(kernel[np.newaxis, np.newaxis], name="kernel")
        self.target = str(target)

    @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32, "images")])
    def __call__(self, images):
        with tf.control_dependencies([tf.io.write_file(self.target, "written by the module")]):
            return tf.reduce_mean(tf.nn.conv2d(images, self.kernel, 1, "SAME"), axis=[1, 2])


def hostile_tf2_module(folder: Path, target: Path) -> Path:
    """A TF2 feature-vector module (32x32 -> 8, as tests.fixtures_hub's) whose `__call__` writes."""
    tf.saved_model.save(_FeatureModule(module_kernel(), target), str(folder))
    return folder


def hostile_tflite(path: Path, target: Path) -> Path:
    """A .tflite whose graph writes `target` through a Flex op (FlexWriteFile: TensorFlow's kernel,
    run by interpreters built with the Flex delegate)."""

    @tf.function(input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32, "images")])
    def model(images):
        with tf.control_dependencies([tf.io.write_file(str(target), "written by the model")]):
            return {"probabilities": tf.identity(_scores(images))}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()],
                                                                model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS,
                                           tf.lite.OpsSet.SELECT_TF_OPS]
    path.write_bytes(converter.convert())
    (path.parent / "output_labels.txt").write_text("".join(f"{label}\n" for label in TWO_LABELS))
    return path


def edited_tflite(source: bytes, path: Path, edit) -> Path:
    """`source` with `edit(model)` applied to its object tree (TFLite's schema classes)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(source))
    edit(model)
    path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    return path


def plain_tflite() -> bytes:
    """A small honest .tflite: the two-class classifier above, built-in ops only."""

    @tf.function(input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32, "images")])
    def model(images):
        return {"probabilities": _scores(images)}

    return tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()],
                                                           model).convert()


def save_tf1_slim_style_module(path: Path, size: int = 32, vector_size: int = 8) -> Path:
    """A TF1 Hub-format feature-vector module built the way TF1-era image modules were (TF-Slim):
    reference variables (`VariableV2`), batch norm under a `tf.cond` on an `is_training` input
    (`Switch`/`Merge`), `FusedBatchNorm`, depthwise and pointwise convolutions, `Relu6`, pooling.

    Signatures `image_feature_vector` and `default` (input "images" [N, size, size, 3] in [0, 1],
    output "default" [N, vector_size]), under the empty tag set, plus the `tfhub_module.pb` marker.
    """
    from tests.fixtures_hub import TF1_HUB_MARKER

    rng = np.random.default_rng(0)
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, size, size, 3], name="images")
        is_training = tf.compat.v1.placeholder_with_default(False, [], name="is_training")

        def variable(name: str, value: np.ndarray) -> tf.Variable:
            return tf.compat.v1.Variable(value.astype(np.float32), name=name, use_resource=False)

        scaled = tf.compat.v1.image.resize_bilinear(images * 2.0 - 1.0, [size, size])
        depthwise = variable("depthwise", rng.normal(size=(3, 3, 3, 1)))
        net = tf.nn.depthwise_conv2d(scaled, depthwise, [1, 1, 1, 1], "SAME")
        scale, offset = variable("gamma", np.ones(3)), variable("beta", np.zeros(3))
        mean, var = variable("moving_mean", np.zeros(3)), variable("moving_variance", np.ones(3))

        def batch_norm(training: bool):
            def normalize():
                return tf.raw_ops.FusedBatchNorm(x=net, scale=scale, offset=offset, mean=mean,
                                                 variance=var, is_training=training)[0]
            return normalize

        tf.compat.v1.disable_control_flow_v2()  # TF1's Switch/Merge, as TF1-era exporters wrote
        try:
            net = tf.compat.v1.cond(is_training, batch_norm(True), batch_norm(False))
        finally:
            tf.compat.v1.enable_control_flow_v2()
        pointwise = variable("pointwise", rng.normal(size=(1, 1, 3, vector_size)))
        net = tf.nn.relu6(tf.nn.conv2d(net, pointwise, 1, "SAME"))
        net = tf.concat([tf.nn.max_pool2d(net, 2, 2, "SAME"), tf.nn.avg_pool2d(net, 2, 2, "SAME")],
                        axis=3)
        features = tf.squeeze(tf.reduce_mean(net, [1, 2], keepdims=True), [1, 2])
        features = features[:, :vector_size] + features[:, vector_size:]
        info = tf.compat.v1.saved_model.utils.build_tensor_info
        signature = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
            inputs={"images": info(images)}, outputs={"default": info(features)})
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            builder = tf.compat.v1.saved_model.Builder(str(path))
            builder.add_meta_graph_and_variables(
                session, [], signature_def_map={"image_feature_vector": signature,
                                                "default": signature})
            builder.save()
    (path / "tfhub_module.pb").write_bytes(TF1_HUB_MARKER)
    return path
