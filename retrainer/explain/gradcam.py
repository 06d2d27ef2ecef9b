"""Grad-CAM on a frozen classifier graph: where in the image the top class's evidence lies.

How the last convolutional block's activations are found, given only an exported model: by the
graph's structure, not by names or by rebuilding. Every explainable extractor ends in a global
average pool (EfficientNet-Lite's `reduce_mean` over height and width, Keras' `pooling="avg"`), so
the input of the `Mean` over axes [1, 2] nearest the output is the last block's [N, h, w, K] map
(or, when a small input leaves that map 1 x 1, the nearest earlier map with spatial extent).
This works on the very weights the user deploys (fine-tuned ones too), needs no op-name
convention, and stays right for graphs exported by earlier versions; the `.meta.json` sidecar (or
the SavedModel's metadata asset) only says which extractor built the graph, to keep the feature to
extractors whose pooled map is a spatial map of the image (the built-in EfficientNet-Lite models and
`keras:` backbones). Rebuilding the extractor from the registry was rejected: it would explain the
registry's weights, not a fine-tuned graph's.

The class score is the logit (the Softmax's or Sigmoid's input) of the top class; its gradient with respect to
the map, averaged over h x w, weighs the K channels; the map is their ReLU'd weighted sum
(Selvaraju et al., 2017). A map that is zero everywhere (no positive evidence) falls back to the
unclipped sum, so a peak is always defined.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Any, Callable, Optional

import numpy as np
import tensorflow as tf

from retrainer.errors import ModelError
from retrainer.explain.heatmap import normalized


@dataclasses.dataclass(frozen=True)
class Explanation:
    """One batch's classifications and heat maps.

    Attributes:
        probabilities: float32 [N, C], the graph's output.
        classes: int64 [N], the explained class of each image (its top class unless given).
        maps: float32 [N, h, w] in [0, 1], the heat maps at the feature map's resolution.
        novelty: float32 [N], the graph's novelty output (None when it has none).
    """

    probabilities: np.ndarray
    classes: np.ndarray
    maps: np.ndarray
    novelty: Optional[np.ndarray] = None


class GradCam:
    """A classifier graph with Grad-CAM tensors added, in its own Session."""

    def __init__(self, graph: Any, images: Any, probabilities: Any, source: str,
                 novelty: Any = None) -> None:
        """Add the Grad-CAM tensors to `graph`.

        Args:
            graph: a tf.Graph holding a frozen classifier (no variables, functions inlined).
            images / probabilities: its float32 [N, H, W, 3] input and [N, C] output tensors.
            source: what the graph came from, for messages.
            novelty: its float32 [N] novelty output tensor, fetched in the same run (or None).

        Raises:
            ModelError: no global-average-pooled convolutional map feeds the output.
        """
        feature_map = last_pooled_map(probabilities)
        if feature_map is None:
            raise ModelError(
                f"cannot explain {source}: no global average pool over a convolutional map "
                "feeds its output, and no map of more than one cell precedes it"
            )
        with graph.as_default():
            score = logits_of(probabilities)
            self.classes = tf.argmax(probabilities, axis=1)
            chosen = tf.gather(score, self.classes, axis=1, batch_dims=1)
            (gradients,) = tf.gradients(tf.reduce_sum(chosen), [feature_map])
            weights = tf.reduce_mean(gradients, axis=[1, 2], keepdims=True)
            # A --tta flip graph runs its N images and then their N mirror images through the
            # extractor: the first N maps are the images' own.
            self.raw_maps = tf.reduce_sum(weights * feature_map, axis=-1)[:tf.shape(images)[0]]
        self.images, self.probabilities, self.feature_map = images, probabilities, feature_map
        self.novelty = novelty
        self._session = tf.compat.v1.Session(graph=graph)

    @classmethod
    def from_graph_def(cls, graph_def: Any, input_name: str, output_name: str,
                       source: str, novelty_name: Optional[str] = None) -> "GradCam":
        """Import a frozen GraphDef; `input_name` / `output_name` / `novelty_name` are tensor
        names ("x:0")."""
        graph = tf.Graph()
        with graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
        return cls(graph, graph.get_tensor_by_name(input_name),
                   graph.get_tensor_by_name(output_name), source,
                   None if novelty_name is None else graph.get_tensor_by_name(novelty_name))

    def explain(self, images: np.ndarray, classes: Optional[np.ndarray] = None) -> Explanation:
        """Classify and explain a batch.

        Args:
            images: float32 [N, H, W, 3] as the graph takes them (RGB in [0, 1]).
            classes: int64 [N], the class to explain for each image; None: its top class.

        Returns:
            Explanation of the batch.
        """
        fetches = [self.probabilities, self.classes, self.raw_maps]
        feeds = {self.images: images}
        if classes is not None:
            feeds[self.classes] = np.asarray(classes, np.int64)
        values = self._session.run(fetches + ([] if self.novelty is None else [self.novelty]),
                                   feeds)
        probabilities, classes, raw = values[:3]
        return Explanation(probabilities, classes, np.stack([normalized(m) for m in raw]),
                           values[3] if len(values) > 3 else None)

    def close(self) -> None:
        self._session.close()


def last_pooled_map(output: Any) -> Any:
    """The [N, h, w, K] map Grad-CAM explains for `output`, or None.

    Walks the graph backwards from `output`, breadth first, to the first `Mean` over axes [1, 2]
    of a rank-4 map: the global average pool. Its input is the last block's map, unless that map
    is 1 x 1 (a backbone that downsamples 32 times, such as MobileNetV2, at --image_size 32):
    a single cell has no "where", so the nearest earlier map with more than one cell on the
    image's path is explained instead (coarser evidence, but still the deployed weights').
    """
    pool = _nearest(output.op, is_global_pool)
    if pool is None:
        return None
    if _cells(pool.inputs[0]) > 1:
        return pool.inputs[0]
    on_image_path = _downstream_of_inputs(output.graph)
    earlier = _nearest(pool.inputs[0].op, lambda op: (
        op in on_image_path and op.type not in _PADDING and len(op.outputs) > 0
        and op.outputs[0].shape.rank == 4 and _cells(op.outputs[0]) > 1))
    return None if earlier is None else earlier.outputs[0]


# A zero-padded copy of a map only adds a border of zeros: explain its input instead.
_PADDING = frozenset({"Pad", "PadV2", "MirrorPad"})


def is_global_pool(op: Any) -> bool:
    """`op` is a `Mean` over axes [1, 2] of a rank-4 map: a global average pool."""
    if op.type != "Mean" or len(op.inputs) != 2 or op.inputs[0].shape.rank != 4:
        return False
    axes = tf.get_static_value(op.inputs[1])
    return axes is not None and sorted(np.atleast_1d(axes).tolist()) == [1, 2]


def _cells(tensor: Any) -> int:
    """h x w of an [N, h, w, K] map; an unknown dimension counts as more than one cell."""
    return (tensor.shape[1] or 2) * (tensor.shape[2] or 2)


def _nearest(start: Any, wanted: Callable[[Any], bool]) -> Any:
    """The first op, breadth first backwards from (and including) `start`, that is `wanted`."""
    queue, seen = deque([start]), {start.name}
    while queue:
        op = queue.popleft()
        if wanted(op):
            return op
        for tensor in op.inputs:
            if tensor.op.name not in seen:
                seen.add(tensor.op.name)
                queue.append(tensor.op)
    return None


def _downstream_of_inputs(graph: Any) -> set[Any]:
    """The ops that depend on a Placeholder: activations, not weights (a rank-4 conv kernel)."""
    reached = {op for op in graph.get_operations() if op.type == "Placeholder"}
    queue = deque(reached)
    while queue:
        for tensor in queue.popleft().outputs:
            for consumer in tensor.consumers():
                if consumer not in reached:
                    reached.add(consumer)
                    queue.append(consumer)
    return reached


def logits_of(probabilities: Any) -> Any:
    """The class scores behind `probabilities`: the input of the Softmax (or a multi-label head's
    Sigmoid) reached through Identity ops; else `probabilities` itself."""
    op = probabilities.op
    while op.type == "Identity":
        op = op.inputs[0].op
    return op.inputs[0] if op.type in ("Softmax", "Sigmoid") else probabilities
