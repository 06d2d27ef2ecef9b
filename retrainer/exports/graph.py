"""Frozen-graph export: the `Classifier` as a GraphDef plus its `.meta.json` sidecar.

The frozen GraphDef is what TensorFlow's label_image.py loads: input op `Placeholder`, float32
[None, H, W, 3] RGB in [0, 1] (the extractor's own normalisation is inside the graph), output op
`final_tensor_name` (default `final_result`), probabilities float32 [None, C] (softmax; sigmoid per
label for a multi-label head), and, when the run fitted one, the novelty score float32 [None] as op
`novelty` (label_image.py ignores it). Next to it,
`<graph>.meta.json` describes it (input size, mean/std for label_image's (x - mean) / std, tensor
names, labels, extractor), so `label-image` needs no flags. Every file is written atomically.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Optional

import tensorflow as tf
from tensorflow.python.framework import convert_to_constants

from retrainer.cache.memo import arrays_digest
from retrainer.errors import UsageError
from retrainer.exports.classifier import Classifier
from retrainer.exports.kept import KeptGraphs, frozen_graph_key, write_sidecar
from retrainer.formats.graph_contract import INPUT_OP, NOVELTY_OUTPUT, graph_sha256
from retrainer.io.atomic import write_bytes_atomically
from retrainer.io.storage import AnyPath, as_path, is_url

log = logging.getLogger(__name__)


def intermediate_graph_path(directory: os.PathLike[str] | str, step: int) -> AnyPath:
    """retrain.py's name for the graph stored at `step`."""
    return as_path(directory) / f"intermediate_{step}.pb"


class GraphExporter:
    """Freezes a `Classifier` (traced once) as often as asked, e.g. at intermediate steps; the
    frozen graph of one state of the variables is built once (the export and the report's heat
    maps share it).

    With a `cache_root` (a local --bottleneck_dir), tracing and freezing (about 0.5 s on
    EfficientNet-Lite0) wait until a graph is needed, and `write_graph` skips both when the file
    already at its path is the graph the same inputs froze to before (`exports.kept`).
    """

    def __init__(self, classifier: Classifier,
                 cache_root: Optional[os.PathLike[str] | str] = None) -> None:
        self.classifier = classifier
        self.cache_root = None if cache_root is None or is_url(cache_root) else cache_root
        self._traced: Any = None
        self._frozen: Optional[tuple[str, tf.compat.v1.GraphDef]] = None
        self._variables: Optional[tuple[tf.Variable, ...]] = None  # found once: a slow walk
        self._kept = KeptGraphs(self.cache_root)
        if self.cache_root is None:
            self._concrete()  # a clashing --final_tensor_name is a usage error at once

    def _concrete(self) -> Any:
        """The traced classifier, its named outputs checked."""
        if self._traced is None:
            concrete = self.classifier.outputs.get_concrete_function()
            _check_final_op(concrete.graph, self.classifier.final_tensor_name)
            if self.classifier.novelty is not None:
                _check_novelty_op(concrete.graph)
            self._traced = concrete
        return self._traced

    def frozen_graph_def(self) -> tf.compat.v1.GraphDef:
        """The graph with the variables' current values baked in as constants."""
        state = self._variables_digest()
        if self._frozen is None or self._frozen[0] != state:
            graph_def = frozen_graph_def(self._concrete())
            _check_frozen(graph_def, self.classifier)
            self._frozen = (state, graph_def)
        return self._frozen[1]

    def frozen_graph_bytes(self) -> bytes:
        """`frozen_graph_def()` serialized (deterministically, as `write_graph` writes it)."""
        return self.frozen_graph_def().SerializeToString(deterministic=True)

    def _variables_digest(self) -> str:
        """SHA-256 of every variable's name, shape and current value (tens of ms)."""
        if self._variables is None:
            self._variables = tuple(self.classifier.variables)
        return arrays_digest(variable.numpy() for variable in self._variables)

    def _key(self) -> str:
        """What the frozen graph is made from (`exports.kept.frozen_graph_key`)."""
        classifier = self.classifier
        novelty = classifier.novelty
        metadata = classifier.metadata()
        return frozen_graph_key(
            metadata["extractor"]["id"], (classifier.head.weights, classifier.head.biases),
            metadata, None if novelty is None else novelty.references)

    def _reused(self, path: os.PathLike[str] | str) -> Optional[bytes]:
        """The bytes of the graph at `path` if they are what this classifier freezes to (see
        the class docstring); it then needs no tracing. None otherwise."""
        if self.cache_root is None:
            return None
        data = self._kept.read(self._key(), path)
        if data is None:
            return None
        graph_def = tf.compat.v1.GraphDef()
        graph_def.ParseFromString(data)
        _check_frozen(graph_def, self.classifier)
        self._frozen = (self._variables_digest(), graph_def)
        return data

    def write_graph(self, path: os.PathLike[str] | str, step: Optional[int] = None,
                    on_frozen: Callable[[bytes], None] = lambda data: None) -> AnyPath:
        """Write the frozen graph and its `.meta.json` sidecar; returns the sidecar's path;
        `on_frozen(data)` is called with a graph frozen for it (not with a kept one).

        The sidecar, written last, holds the graph's SHA-256: after a kill between the two writes
        (or a graph copied without its sidecar) label-image refuses the pair instead of serving the
        new graph with the old labels.
        """
        data = self._reused(path)
        made = data is None
        if data is None:
            data = self.frozen_graph_bytes()
            write_bytes_atomically(path, data)
        sha256 = graph_sha256(data)  # once, for the record and the sidecar
        if made:
            if self.cache_root is not None:
                self._kept.remember(self._key(), sha256)
            on_frozen(data)
        return write_sidecar(path, self.classifier.metadata(step), sha256)


def frozen_graph_def(function: Any) -> tf.compat.v1.GraphDef:
    """A concrete function's graph with its variables replaced by constants, pruned to what its
    outputs need.

    `convert_variables_to_constants_v2` does this and then builds a callable function from the
    result, which took 0.9 of its 1.0 s on EfficientNet-Lite0; only the GraphDef is needed
    here, so its first half is called directly (same graph: tests/test_export.py), with the
    public function as the fallback should TensorFlow rename its internals.
    """
    outputs = [tensor.op.name for tensor in function.outputs]
    try:
        converter = convert_to_constants._FunctionConverterDataInEager(
            func=function, lower_control_flow=True, aggressive_inlining=False)
        graph_def, _ = convert_to_constants._replace_variables_by_constants(
            converter_data=converter)
    except (AttributeError, TypeError):
        frozen = convert_to_constants.convert_variables_to_constants_v2(function)
        return frozen.graph.as_graph_def()
    return _pruned(graph_def, outputs)


def _pruned(graph_def: tf.compat.v1.GraphDef, outputs: list[str]) -> tf.compat.v1.GraphDef:
    """The nodes `outputs` depend on (data and control inputs), in their original order."""
    nodes = {node.name: node for node in graph_def.node}
    needed: set[str] = set()
    pending = list(outputs)
    while pending:
        name = pending.pop()
        if name in needed:
            continue
        needed.add(name)
        pending += [source.lstrip("^").split(":")[0] for source in nodes[name].input]
    pruned = tf.compat.v1.GraphDef()
    pruned.versions.CopyFrom(graph_def.versions)
    pruned.library.CopyFrom(graph_def.library)
    pruned.node.extend(node for node in graph_def.node if node.name in needed)
    return pruned


def _check_final_op(graph: tf.Graph, name: str) -> None:
    """`name` must be our softmax (sigmoid) identity, not a renamed copy clashing with an extractor
    op."""
    try:
        operation = graph.get_operation_by_name(name)
    except KeyError:
        operation = None
    ours = (operation is not None and operation.type == "Identity"
            and operation.inputs[0].op.type in ("Softmax", "Sigmoid"))
    if not ours:
        raise UsageError(
            f"--final_tensor_name {name!r} clashes with an operation of the feature extractor's "
            "graph; choose another name (the default is final_result)."
        )


def _check_novelty_op(graph: tf.Graph) -> None:
    """The `novelty` op is ours: an extractor op of that name would have renamed it."""
    try:
        operation = graph.get_operation_by_name(NOVELTY_OUTPUT)
    except KeyError:
        operation = None
    if operation is None or not operation.inputs[0].op.name.startswith("novelty_ops/"):
        raise UsageError(f"the feature extractor's graph has an operation named {NOVELTY_OUTPUT!r}, "
                         "which the novelty output needs; use another extractor.")


def _check_frozen(graph_def: tf.compat.v1.GraphDef, classifier: Classifier) -> None:
    """The exported contract holds: named ops present, no variables left."""
    nodes = {node.name: node for node in graph_def.node}
    placeholder = nodes.get(INPUT_OP)
    if placeholder is None or placeholder.op != "Placeholder":
        raise RuntimeError(f"frozen graph lacks the {INPUT_OP!r} input op")
    for name in (classifier.final_tensor_name,) + ((NOVELTY_OUTPUT,) if classifier.novelty else ()):
        if name not in nodes:
            raise RuntimeError(f"frozen graph lacks the {name!r} output op")
    leftover = sorted({node.op for node in graph_def.node if "Variable" in node.op})
    if leftover:
        raise RuntimeError(f"frozen graph still has variable ops: {leftover}")
