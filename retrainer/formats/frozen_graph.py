"""Loading a frozen GraphDef for classification (helper of `retrainer.classify`).

Every way a graph file or an op name can be wrong becomes a one-line UsageError / ModelError that
says what the user likely meant: label_image.py users kept guessing op names (tensorflow#12728).
"""

from __future__ import annotations

import difflib
import os
from typing import Any, NamedTuple

import tensorflow as tf
from google.protobuf.message import DecodeError

from retrainer.errors import ModelError, UsageError
from retrainer.io.storage import AnyPath

_MAX_CANDIDATES = 6


class FrozenGraph(NamedTuple):
    graph: tf.Graph
    input: tf.Tensor  # float32 [N, H, W, 3], H and W possibly unknown
    output: tf.Tensor  # [N, C] scores


def read_graph_file(path: AnyPath) -> bytes:
    """The bytes of the .pb at `path`, read once (its hash and its parse must see the same bytes).

    Raises:
        UsageError: the file is missing, unreadable or a directory.
    """
    if path.is_dir():
        raise UsageError(f"--graph must be a frozen graph file (.pb), but {path} is a directory")
    try:
        return path.read_bytes()
    except OSError as error:
        raise UsageError(
            f"cannot read graph {path}: {error.strerror or error}; pass the .pb written by retrain "
            "(--output_graph, default retrain_output/output_graph.pb)"
        ) from None


def load_frozen_graph(path: AnyPath, data: bytes, input_layer: str, output_layer: str) -> FrozenGraph:
    """Import a frozen GraphDef into a new tf.Graph and find its input and output tensors.

    Args:
        path: the .pb file, for messages.
        data: its bytes (`read_graph_file`).
        input_layer / output_layer: op names ("Placeholder") or tensor names ("Placeholder:0").

    Raises:
        ModelError: not a GraphDef, an op name not in it, or tensors of the wrong dtype/rank.
    """
    graph_def = parse_graph_def(path, data)
    _require_op(graph_def, input_layer, "input", path)
    _require_op(graph_def, output_layer, "output", path)
    graph = tf.Graph()
    with graph.as_default():
        try:
            tf.compat.v1.import_graph_def(graph_def, name="")
        except (ValueError, tf.errors.OpError) as error:
            raise ModelError(f"cannot load graph {path}: {_first_line(error)}") from None
    frozen = FrozenGraph(graph, graph.get_tensor_by_name(_tensor_name(input_layer)),
                         graph.get_tensor_by_name(_tensor_name(output_layer)))
    _check_input(frozen.input, path)
    _check_output(frozen.output, path)
    return frozen


def parse_graph_def(path: os.PathLike[str], data: bytes) -> Any:
    """The GraphDef message in `data`, read from `path`.

    Raises:
        ModelError: it does not parse, or holds no ops.
    """
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(data)
    except (DecodeError, RuntimeError) as error:
        reason = _first_line(error)
    else:
        if graph_def.node:
            return graph_def
        reason = "it holds no ops"
    raise ModelError(
        f"{path} is not a frozen TensorFlow graph (GraphDef): {reason}; pass the .pb written by retrain"
    )


def _require_op(graph_def: Any, name: str, role: str, graph_path: AnyPath) -> None:
    """ModelError unless op `name` ("op" or "op:0") exists, listing what the user likely meant."""
    op_name = name.split(":")[0]
    names = [node.name for node in graph_def.node]
    if op_name in names:
        return
    if role == "input":
        likely = [node.name for node in graph_def.node if node.op == "Placeholder"]
        kind = "Placeholder ops"
    else:
        likely = _likely_outputs(graph_def)
        kind = "likely outputs"
    close = [match for match in difflib.get_close_matches(op_name, names, n=3) if match not in likely]
    listed = ", ".join((likely + close)[:_MAX_CANDIDATES]) or "none"
    raise ModelError(
        f"{role} op {name!r} is not in graph {graph_path}; {kind}: {listed}. "
        f"Pass --{role}_layer with one of them"
    )


def _likely_outputs(graph_def: Any) -> list[str]:
    """Identity ops passing a Softmax (multi-label: Sigmoid) on (like final_result), those ops,
    then ops nothing consumes."""
    consumers: dict[str, list[str]] = {}
    for node in graph_def.node:
        for source in node.input:
            if not source.startswith("^"):  # data inputs only, not control dependencies
                consumers.setdefault(source.split(":")[0], []).append(node.name)
    ops = {node.name: node.op for node in graph_def.node}
    softmax = [name for name, op in ops.items() if op in ("Softmax", "Sigmoid")]
    passed_on: list[str] = []
    frontier = list(softmax)
    while frontier:
        for consumer in consumers.get(frontier.pop(0), []):
            if ops[consumer] == "Identity" and consumer not in passed_on:
                passed_on.append(consumer)
                frontier.append(consumer)
    sinks = [name for name, op in ops.items()
             if name not in consumers and op not in ("Const", "NoOp", "Placeholder")]
    return list(dict.fromkeys(passed_on + softmax + sinks))


def _tensor_name(name: str) -> str:
    return name if ":" in name else f"{name}:0"


def _check_input(tensor: tf.Tensor, graph_path: AnyPath) -> None:
    shape = tensor.shape
    image_like = shape.rank is None or (shape.rank == 4 and shape[-1] in (None, 3))
    if tensor.dtype.name != "float32" or not image_like:
        raise ModelError(
            f"input {tensor.name} of graph {graph_path} is {tensor.dtype.name} {shape}, but label-image "
            "feeds float32 [N, height, width, 3] RGB images; pass the --input_layer that takes them"
        )


def _check_output(tensor: tf.Tensor, graph_path: AnyPath) -> None:
    if tensor.shape.rank not in (None, 2):
        raise ModelError(
            f"output {tensor.name} of graph {graph_path} has shape {tensor.shape}, expected "
            "[N, classes] scores; pass the --output_layer of the final softmax (retrain's: final_result)"
        )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
