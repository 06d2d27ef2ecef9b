"""Checking a `.tflite` flatbuffer: built-in ops only, tensors within the resource limits.

TFLite's built-in ops have no file-system or network access; a model can still ask for code the
interpreter would look up elsewhere: a custom op (among them "Flex" ops, which run TensorFlow
kernels, and ops compiled for an accelerator, such as Edge TPU's), or a DELEGATE op handing part
of the graph to a delegate. Those are refused. The flatbuffer is read with `flatbuffers` alone
(schema: tensorflow/lite/schema/schema.fbs; the numbers below are its field slots and enums).
"""

from __future__ import annotations

import math
import struct
from typing import Optional

from flatbuffers.number_types import Int8Flags, Int32Flags, Uint32Flags
from flatbuffers.table import Table

from retrainer.errors import ModelError
from retrainer.formats import flatbuffer_fields as fields
from retrainer.io.storage import AnyPath
from retrainer.security.limits import Budget, format_size
from retrainer.security.refusal import refused

CUSTOM, DELEGATE = 32, 51  # BuiltinOperator
_MODEL_OPERATOR_CODES, _MODEL_SUBGRAPHS = 1, 2
_CODE_DEPRECATED_BUILTIN, _CODE_CUSTOM, _CODE_BUILTIN = 0, 1, 3
_SUBGRAPH_TENSORS, _SUBGRAPH_OPERATORS = 0, 3
_TENSOR_SHAPE, _TENSOR_TYPE, _TENSOR_NAME = 0, 1, 3
_OPERATOR_OPCODE, _OPERATOR_OUTPUTS = 0, 2
# TensorType -> bytes per element (anything else: 8).
_TYPE_BYTES = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 8: 8, 9: 1, 10: 8, 11: 16, 12: 8,
               15: 4, 16: 2, 17: 1, 18: 2}


def check_tflite(path: AnyPath, data: bytes, budget: Budget) -> None:
    """Refuse the `.tflite` in `data` if it has a custom or DELEGATE op or an oversized tensor.

    Raises:
        UntrustedModelError: naming the op (and the operator using it) or the tensor.
        ModelError: not a readable TFLite flatbuffer.
    """
    try:
        model = fields.root(data)
        codes = [_operator_code(code) for code in fields.tables(model, _MODEL_OPERATOR_CODES)]
        subgraphs = fields.tables(model, _MODEL_SUBGRAPHS)
        for index, (builtin, custom) in enumerate(codes):
            if builtin in (CUSTOM, DELEGATE):
                raise refused(path, _problem(builtin, custom), _user_of(subgraphs, index))
        for subgraph in subgraphs:
            for tensor in fields.tables(subgraph, _SUBGRAPH_TENSORS):
                _check_tensor(path, tensor, budget)
    except (IndexError, struct.error, UnicodeDecodeError, ValueError) as error:
        raise ModelError(f"cannot load TFLite model {path}: truncated or corrupt ({error}); "
                         "export it again (retrain --tflite_output_file)") from None


def _problem(builtin: int, custom: str) -> str:
    if builtin == DELEGATE:
        return "a DELEGATE op asks for a delegate to run part of the model"
    if custom.startswith("Flex"):
        return (f"custom op {custom} runs TensorFlow's {custom[4:]} kernel (Flex), outside "
                "TFLite's built-in ops")
    return f"custom op {custom!r} is not one of TFLite's built-in ops"


def _user_of(subgraphs: list[Table], code_index: int) -> Optional[str]:
    """'operator N of subgraph M (output T)' of the first operator using op code `code_index`."""
    for subgraph_index, subgraph in enumerate(subgraphs):
        tensors = fields.tables(subgraph, _SUBGRAPH_TENSORS)
        for operator_index, operator in enumerate(fields.tables(subgraph, _SUBGRAPH_OPERATORS)):
            opcode = fields.scalar(operator, _OPERATOR_OPCODE, Uint32Flags)
            if opcode == code_index:
                outputs = fields.numbers(operator, _OPERATOR_OUTPUTS, Int32Flags)
                name = (fields.string(tensors[outputs[0]], _TENSOR_NAME)
                        if outputs and 0 <= outputs[0] < len(tensors) else "")
                return (f"operator {operator_index} of subgraph {subgraph_index}"
                        + (f", output {name}" if name else ""))
    return None


def _check_tensor(path: AnyPath, tensor: Table, budget: Budget) -> None:
    dims = fields.numbers(tensor, _TENSOR_SHAPE, Int32Flags)
    if any(dim < 0 for dim in dims):
        return
    nbytes = math.prod(dims) * _TYPE_BYTES.get(
        fields.scalar(tensor, _TENSOR_TYPE, Int8Flags), 8)
    broken = budget.tensor(nbytes, stored=False)
    if broken is not None:
        name = fields.string(tensor, _TENSOR_NAME)
        raise refused(path, f"tensor {name!r} of shape {dims} takes {format_size(nbytes)}, "
                            f"{broken}")


def _operator_code(code: Table) -> tuple[int, str]:
    """(builtin op number, custom op name) of an OperatorCode table."""
    deprecated = fields.scalar(code, _CODE_DEPRECATED_BUILTIN, Int8Flags)
    builtin = fields.scalar(code, _CODE_BUILTIN, Int32Flags)
    return max(deprecated, builtin), fields.string(code, _CODE_CUSTOM)
