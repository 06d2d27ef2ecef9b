"""Class activation maps (CAM) on a frozen classifier graph whose head is linear in the pooled map.

When the class score is linear in the global average of the last block's [h, w, K] map A (a
retrained head: logits = W^T mean(A) + b; a --tta flip graph averages two such vectors first),
Grad-CAM's channel weights are the class's column of W divided by a constant, so the Grad-CAM
map of class c is sum_k W[k, c] A[:, :, k] times a positive number, which `normalized` removes:
CAM (Zhou et al., 2016) and Grad-CAM give the same picture. CAM needs no gradient, no class
chosen by the graph and only the images' own maps: a --tta flip graph's mirror half (as much
work again) is not run, the extractor's input batch is fed with the images alone.

`class_activation_maps` returns None when the graph is not of that form (another head, a map
taken before the last block); `retrainer.explain.gradcam.GradCam` explains any graph.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import tensorflow as tf

from retrainer.explain.gradcam import is_global_pool, last_pooled_map, logits_of
from retrainer.explain.heatmap import normalized

# Ops that keep the pooled vectors -> head input path linear: slices, sums, identities (a
# --tta flip graph's (own + mirror) * 0.5); Mul/RealDiv only by a constant.
_LINEAR = frozenset({"Identity", "StridedSlice", "AddV2", "Add", "Mul", "RealDiv"})
_BIAS_ADD = frozenset({"BiasAdd", "AddV2", "Add"})


class ClassActivationMaps:
    """A frozen classifier graph's last map and class weights, in its own Session."""

    def __init__(self, graph: Any, feed: Any, feature_map: Any, weights: np.ndarray) -> None:
        self.feed, self.feature_map, self.weights = feed, feature_map, weights
        self._session = tf.compat.v1.Session(graph=graph)

    def maps(self, images: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """float32 [N, h, w] in [0, 1]: the CAM of `classes` (int [N]) over `images` (float32
        [N, H, W, 3], RGB in [0, 1]), each scaled as Grad-CAM's are (`normalized`)."""
        feature_map = self._session.run(self.feature_map, {self.feed: images})
        raw = np.einsum("nhwk,kn->nhw", feature_map, self.weights[:, classes])
        return np.stack([normalized(single) for single in raw])

    def feature_map_model(self) -> bytes:
        """The graph's layers from the extractor's input to the last map as a float32 .tflite
        (float32 [N, H, W, 3] -> [N, h, w, K]): `retrainer.explain.lite_cam` runs it without
        TensorFlow."""
        graph_def = tf.compat.v1.GraphDef()
        graph_def.CopyFrom(self._session.graph.as_graph_def())
        feed = self.feed.op.name
        for node in graph_def.node:
            if node.name == feed and node.op != "Placeholder":  # a --tta flip graph's concat
                node.Clear()
                node.name, node.op = feed, "Placeholder"
                node.attr["dtype"].type = tf.float32.as_datatype_enum
        height, width = (int(size) for size in self.feed.shape[1:3])
        converter = tf.compat.v1.lite.TFLiteConverter(
            graph_def, None, None, input_arrays_with_shape=[(feed, [1, height, width, 3])],
            output_arrays=[self.feature_map.op.name])
        return bytes(converter.convert())

    def close(self) -> None:
        self._session.close()


def class_activation_maps(graph_def: Any, input_name: str, output_name: str
                          ) -> Optional[ClassActivationMaps]:
    """CAM for a frozen GraphDef (tensor names "x:0"), or None when its class scores are not
    linear in the pooled last map (see the module docstring)."""
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    images = graph.get_tensor_by_name(input_name)
    feature_map = last_pooled_map(graph.get_tensor_by_name(output_name))
    if feature_map is None or not any(is_global_pool(op) for op in feature_map.consumers()):
        return None  # no map, or one taken before the last block: not linear
    weights = _head_weights(logits_of(graph.get_tensor_by_name(output_name)), feature_map)
    if weights is None:
        return None
    return ClassActivationMaps(graph, _extractor_input(images), feature_map, weights)


def _head_weights(logits: Any, feature_map: Any) -> Optional[np.ndarray]:
    """float32 [K, C]: the constant W of logits = x W + b, when x is reached from the pooled map
    through linear ops only; else None."""
    op = _through_identities(logits.op)
    if op.type in _BIAS_ADD and len(op.inputs) == 2:
        terms = [_through_identities(tensor.op) for tensor in op.inputs]
        matmuls = [term for term in terms if term.type == "MatMul"]
        others = [term for term in terms if term.type != "MatMul"]
        if len(matmuls) != 1 or tf.get_static_value(others[0].outputs[0]) is None:
            return None
        op = matmuls[0]
    if op.type != "MatMul" or op.get_attr("transpose_a") or op.get_attr("transpose_b"):
        return None
    weights = tf.get_static_value(op.inputs[1])
    channels = feature_map.shape[-1]
    if weights is None or weights.ndim != 2 or weights.shape[0] != channels:
        return None
    return weights.astype(np.float32) if _linear_from(op.inputs[0], feature_map) else None


def _linear_from(tensor: Any, feature_map: Any) -> bool:
    """`tensor` is reached from the global average of `feature_map` through `_LINEAR` ops on the
    data path alone (a slice's bounds are not data; constants may be added or multiplied)."""
    stack, seen, pooled = [tensor.op], set(), False
    while stack:
        op = stack.pop()
        if op.name in seen or op.type == "Const":
            continue
        seen.add(op.name)
        if op.type == "Mean":
            if not is_global_pool(op) or op.inputs[0].name != feature_map.name:
                return False
            pooled = True
            continue
        if op.type not in _LINEAR:
            return False
        data = [input_ for input_ in op.inputs if tf.get_static_value(input_) is None]
        if op.type in ("Identity", "StridedSlice"):
            data = op.inputs[:1]
        elif op.type in ("Mul", "RealDiv") and len(data) != 1:
            return False  # a product of two activations
        stack.extend(input_.op for input_ in data)
    return pooled


def _extractor_input(images: Any) -> Any:
    """The batch the extractor reads: a --tta flip graph's concat of the images and their mirror
    images (fed with the images alone: the mirror half is not computed), else the images."""
    for consumer in images.consumers():
        if (consumer.type == "ConcatV2" and tf.get_static_value(consumer.inputs[-1]) == 0
                and consumer.inputs[0].name == images.name):
            return consumer.outputs[0]
    return images


def _through_identities(op: Any) -> Any:
    while op.type == "Identity":
        op = op.inputs[0].op
    return op
