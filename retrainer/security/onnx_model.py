"""Checking an `.onnx` model: standard ops only, external data inside its folder, sizes in limits.

ONNX Runtime's standard operators have no file-system or network access. What a model can still
ask for: ops of a domain outside the ONNX standard (custom ops, which need code registered with
the runtime), op names no standard domain defines, and external data -- initializer bytes read
from a file the model names, which could lie anywhere. Local functions (ONNX's own composition of
ops) are checked through their bodies; subgraphs (`If`, `Loop`, `Scan`) likewise. Read with the
`onnx` package's protobuf classes only.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterator, Optional

from google.protobuf.message import DecodeError

from retrainer.errors import ModelError
from retrainer.io.storage import AnyPath
from retrainer.security.limits import Budget, format_size
from retrainer.security.refusal import refused

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "ai.onnx.training",
                              "ai.onnx.preview.training"})
# TensorProto.DataType -> bytes per element (anything else: 8).
_TYPE_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8,
               14: 8, 15: 16, 16: 2, 17: 1, 18: 1, 19: 1, 20: 1, 21: 1, 22: 1, 23: 1}
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
# op -> input holding the output's shape (or a factor of it), when that input is a constant.
_SHAPE_OPERANDS = {"ConstantOfShape": 0, "Expand": 1, "Tile": 1}


def check_onnx(path: AnyPath, data: bytes, budget: Budget) -> None:
    """Refuse the ONNX model in `data` (read from `path`) unless every op is a standard one.

    Raises:
        UntrustedModelError: a custom or unknown op, external data outside the model's folder,
            a tensor over the resource limits.
        ModelError: not an ONNX model, or the `onnx` package is missing.
    """
    try:
        import onnx  # the optional [onnx] extra
    except ImportError:
        raise ModelError(f"checking ONNX model {path} needs the onnx package: "
                         "pip install 'retrainer[onnx]'") from None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError) as error:
        raise ModelError(f"{path} is not an ONNX model: {error}") from None
    if not model.HasField("graph"):
        raise ModelError(f"{path} is not an ONNX model: it has no graph")
    # Domains merely imported (ONNX Runtime's quantizer imports com.microsoft and others) run
    # nothing: the nodes decide.
    functions = {(function.domain, function.name): function for function in model.functions}
    _OnnxCheck(path, functions, budget).check_graph(model.graph, None)


class _OnnxCheck:
    def __init__(self, path: AnyPath, functions: dict[tuple[str, str], Any], budget: Budget) -> None:
        import onnx.defs  # the optional [onnx] extra (check_onnx said so if missing)

        self.path = path
        self.functions = functions
        self.budget = budget
        self.has_schema = onnx.defs.has
        self._checked: set[tuple[str, str]] = set()

    def check_graph(self, graph: Any, function: Optional[str]) -> None:
        constants = {tensor.name: tensor for tensor in graph.initializer}
        for tensor in [*graph.initializer, *(sparse.values for sparse in graph.sparse_initializer)]:
            self._check_tensor(tensor, tensor.name, function)
        for index, node in enumerate(graph.node):
            self._check_node(node, node.name or f"#{index} {node.op_type}", function, constants)

    def _check_node(self, node: Any, name: str, function: Optional[str],
                    constants: dict[str, Any]) -> None:
        key = (node.domain, node.op_type)
        if key in self.functions:
            self._check_function(key)
        elif node.domain not in STANDARD_DOMAINS:
            raise refused(self.path, f"custom op {node.op_type} of domain {node.domain!r} is not a "
                                     "standard ONNX op (unknown domain)", name, function)
        elif not self.has_schema(node.op_type, node.domain):
            raise refused(self.path, f"op {node.op_type} is not a standard ONNX op", name, function)
        for tensor in _attribute_tensors(node):
            self._check_tensor(tensor, name, function)
        if node.op_type == "Constant":
            for tensor in _attribute_tensors(node):
                constants[node.output[0]] = tensor
        operand = _SHAPE_OPERANDS.get(node.op_type)
        if operand is not None and len(node.input) > operand:
            self._check_made_shape(node, constants.get(node.input[operand]), name, function)
        for graph in _attribute_graphs(node):
            self.check_graph(graph, function)

    def _check_function(self, key: tuple[str, str]) -> None:
        if key in self._checked:
            return
        self._checked.add(key)
        function = self.functions[key]
        name = f"{key[0]}.{key[1]}" if key[0] else key[1]
        constants: dict[str, Any] = {}
        for index, node in enumerate(function.node):
            self._check_node(node, node.name or f"#{index} {node.op_type}", name, constants)

    def _check_tensor(self, tensor: Any, node: str, function: Optional[str]) -> None:
        if tensor.data_location == _EXTERNAL:
            self._check_external(tensor, node, function)
        nbytes = math.prod(tensor.dims) * _TYPE_BYTES.get(tensor.data_type, 8)
        broken = self.budget.tensor(nbytes, stored=True)
        if broken is not None:
            raise refused(self.path, f"tensor {tensor.name!r} of shape {list(tensor.dims)} "
                                     f"declares {format_size(nbytes)}, {broken}", node, function)

    def _check_made_shape(self, node: Any, shape: Any, name: str, function: Optional[str]) -> None:
        import onnx.numpy_helper  # the optional [onnx] extra

        if shape is None or shape.data_location == _EXTERNAL or math.prod(shape.dims) > 64:
            return
        values = onnx.numpy_helper.to_array(shape).astype("int64").ravel().tolist()
        if any(value < 0 for value in values):
            return
        nbytes = math.prod(values) * 4
        broken = self.budget.tensor(nbytes, stored=False)
        if broken is not None:
            raise refused(self.path, f"{node.op_type} makes a tensor of shape {values} (at least "
                                     f"{format_size(nbytes)}), {broken}", name, function)

    def _check_external(self, tensor: Any, node: str, function: Optional[str]) -> None:
        location = {entry.key: entry.value for entry in tensor.external_data}.get("location", "")
        folder = Path(os.fspath(self.path)).parent
        if (not location or os.path.isabs(location) or ".." in Path(location).parts
                or not _inside(folder, folder / location)):
            raise refused(self.path, f"tensor {tensor.name!r} reads its data from {location!r}, "
                                     "outside the model's folder", node, function)


def _attribute_tensors(node: Any) -> Iterator[Any]:
    for attribute in node.attribute:
        if attribute.HasField("t"):
            yield attribute.t
        yield from attribute.tensors


def _attribute_graphs(node: Any) -> Iterator[Any]:
    for attribute in node.attribute:
        if attribute.HasField("g"):
            yield attribute.g
        yield from attribute.graphs


def _inside(folder: Path, path: Path) -> bool:
    root, real = os.path.realpath(folder), os.path.realpath(path)
    return os.path.commonpath([root, real]) == root
