"""Memory a TensorFlow graph declares before running: constants, variables, shapes fixed in it.

Read from the NodeDefs alone. A `Const` counts its declared shape, not its stored bytes (one stored
value may be broadcast to any shape); ops that allocate a tensor of a shape given by another input
(`Fill`, `BroadcastTo`, random ops, `Tile`, resizes, ...) count that shape when the input is a
`Const` in the same graph or function. Shapes computed at run time are not known here.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional

import numpy as np

from retrainer.security.limits import Budget, element_count, format_size

# TensorFlow DataType enum (types.proto) -> bytes per element; reference types are value + 100.
_FLOAT, _DOUBLE, _INT32, _INT64, _STRING = 1, 2, 3, 9, 7
DTYPE_BYTES = {
    1: 4, 2: 8, 3: 4, 4: 1, 5: 2, 6: 1, 7: 24, 8: 8, 9: 8, 10: 1, 11: 1, 12: 1, 13: 4, 14: 2,
    15: 2, 16: 2, 17: 2, 18: 16, 19: 2, 20: 8, 21: 8, 22: 4, 23: 8, 24: 1, 25: 1, 26: 1, 27: 1,
    28: 1, 29: 1, 30: 1, 31: 1, 32: 1, 33: 1,
}
DTYPE_NAMES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8",
               7: "string", 9: "int64", 10: "bool", 14: "bfloat16", 19: "float16"}
_INT_DTYPES = {_INT32: "<i4", _INT64: "<i8"}
_MAX_SHAPE_VALUES = 64  # a shape or size operand is a handful of numbers

# op -> (input holding the output's shape or a factor of it, attr naming the output dtype).
# The output has at least prod(values) elements.
SHAPE_OPERANDS: dict[str, tuple[int, str]] = {
    "Fill": (0, "T"),
    "BroadcastTo": (1, "T"),
    "Empty": (0, "dtype"),
    "RandomUniform": (0, "dtype"),
    "RandomStandardNormal": (0, "dtype"),
    "TruncatedNormal": (0, "dtype"),
    "RandomUniformInt": (0, "Tout"),
    "StatelessRandomUniform": (0, "dtype"),
    "StatelessRandomNormal": (0, "dtype"),
    "StatelessTruncatedNormal": (0, "dtype"),
    "StatelessRandomUniformV2": (0, "dtype"),
    "StatelessRandomNormalV2": (0, "dtype"),
    "StatelessTruncatedNormalV2": (0, "dtype"),
    "StatelessRandomUniformInt": (0, "dtype"),
    "StatelessRandomUniformIntV2": (0, "dtype"),
    "StatelessRandomUniformFullInt": (0, "dtype"),
    "StatelessRandomUniformFullIntV2": (0, "dtype"),
    "ScatterNd": (2, "T"),
    "SparseToDense": (1, "T"),
    "Tile": (1, "T"),
    "Conv2DBackpropInput": (0, "T"),
    "ResizeBilinear": (1, ""),
    "ResizeNearestNeighbor": (1, "T"),
    "ResizeBicubic": (1, ""),
    "ResizeArea": (1, ""),
    "ScaleAndTranslate": (1, ""),
    "OneHot": (1, "T"),
    "UnsortedSegmentSum": (2, "T"),
    "UnsortedSegmentMax": (2, "T"),
    "UnsortedSegmentMin": (2, "T"),
    "UnsortedSegmentProd": (2, "T"),
}
VARIABLE_OPS = ("VarHandleOp", "VariableV2", "Variable")


def check_declared_sizes(nodes: Iterable[Any], budget: Budget) -> Optional[tuple[Any, str]]:
    """The first node (NodeDef) of one graph or function body whose declared size breaks a limit.

    Args:
        nodes: the NodeDefs of one scope (a GraphDef or one FunctionDef's body).
        budget: running totals, shared across every scope of the model.

    Returns:
        (node, why) for the first node over a limit, or None.
    """
    nodes = list(nodes)
    constants = {node.name: node for node in nodes if node.op == "Const"}
    for node in nodes:
        declared = _declared(node, constants)
        if declared is None:
            continue
        nbytes, dtype, shape, stored = declared
        broken = budget.tensor(nbytes, stored)
        if broken is not None:
            what = f"a {DTYPE_NAMES.get(dtype, 'tensor')} {shape} ({format_size(nbytes)})"
            verb = "declares" if stored else "makes"
            return node, f"{node.op} {verb} {what}, {broken}"
    return None


def tensor_proto_bytes(tensor: Any) -> tuple[int, list[int]]:
    """(declared bytes, dims) of a TensorProto: its shape times its dtype's size."""
    dims = [dim.size for dim in tensor.tensor_shape.dim]
    count = element_count(dims) or 0
    return count * dtype_bytes(tensor.dtype), dims


def dtype_bytes(dtype: int) -> int:
    return DTYPE_BYTES.get(dtype % 100, 8)


def _declared(node: Any, constants: dict[str, Any]) -> Optional[tuple[int, int, list[int], bool]]:
    """(bytes, dtype, dims, stored) of what `node` allocates, when the graph says; else None."""
    if node.op == "Const" and "value" in node.attr:
        tensor = node.attr["value"].tensor
        nbytes, dims = tensor_proto_bytes(tensor)
        return nbytes, tensor.dtype, dims, True
    if node.op in VARIABLE_OPS and "shape" in node.attr:
        dims = [dim.size for dim in node.attr["shape"].shape.dim]
        dtype = node.attr["dtype"].type if "dtype" in node.attr else _FLOAT
        count = element_count(dims)
        return (count * dtype_bytes(dtype), dtype, dims, True) if count is not None else None
    if node.op == "Range":
        return _range_bytes(node, constants)
    operand = SHAPE_OPERANDS.get(node.op)
    if operand is None or len(node.input) <= operand[0]:
        return None
    values = const_ints(constants.get(_source(node.input[operand[0]])))
    if values is None or any(value < 0 for value in values):
        return None
    dtype = node.attr[operand[1]].type if operand[1] in node.attr else _FLOAT
    return math.prod(values) * dtype_bytes(dtype), dtype, values, False


def _range_bytes(node: Any, constants: dict[str, Any]) -> Optional[tuple[int, int, list[int], bool]]:
    bounds = [const_ints(constants.get(_source(name))) for name in node.input[:3]]
    if len(bounds) != 3 or any(value is None or len(value) != 1 for value in bounds):
        return None
    (start,), (limit,), (delta,) = bounds  # type: ignore[misc]
    if delta == 0:
        return None
    count = max(0, math.ceil((limit - start) / delta))
    dtype = node.attr["Tidx"].type if "Tidx" in node.attr else _INT32
    return count * dtype_bytes(dtype), dtype, [count], False


def const_ints(node: Any) -> Optional[list[int]]:
    """The integer values of a small int32/int64 `Const` NodeDef, else None."""
    if node is None or "value" not in node.attr:
        return None
    tensor = node.attr["value"].tensor
    layout = _INT_DTYPES.get(tensor.dtype)
    count = element_count([dim.size for dim in tensor.tensor_shape.dim])
    if layout is None or count is None or count > _MAX_SHAPE_VALUES:
        return None
    if tensor.tensor_content:
        values = np.frombuffer(tensor.tensor_content, layout).tolist()
    else:
        values = list(tensor.int_val if tensor.dtype == _INT32 else tensor.int64_val)
    if not values:
        values = [0]
    if len(values) < count:  # TensorFlow repeats the last stored value
        values += [values[-1]] * (count - len(values))
    return [int(value) for value in values[:count]] if count else []


def _source(name: str) -> str:
    """Input "node:output:0" / "node:1" / "^node" -> "node"."""
    return name.lstrip("^").split(":")[0]
