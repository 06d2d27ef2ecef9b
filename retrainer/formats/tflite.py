"""TFLite conversion and the interpreter that runs a `.tflite`, for every caller alike.

The int8 extraction engine (`retrainer.engines.int8`), the TFLite export (`retrainer.exports.tflite`)
and `label-image` (`retrainer.classify.tflite`) all convert and run through here, so the route can
move from `tf.lite.TFLiteConverter` (whose quantizing is deprecated in favour of the LiteRT tools)
and from `tf.lite.Interpreter` to LiteRT in one place. `ai-edge-litert` (`pip install
'retrainer[litert]'`) runs the models when installed; otherwise TensorFlow's own interpreter does
(same kernels; its deprecation warning is silenced).
"""

from __future__ import annotations

import struct
import warnings
from typing import TYPE_CHECKING, Any, Iterable, NamedTuple, Optional

import numpy as np
from flatbuffers import number_types

from retrainer.formats import flatbuffer_fields as fields

if TYPE_CHECKING:  # imported where a model is converted, or run without LiteRT: a kept model
    import tensorflow as tf  # runs on LiteRT alone (the int8 engine's, beside TF's own import)

try:
    from ai_edge_litert.interpreter import Interpreter as _LiteRTInterpreter
except ImportError:  # optional (`pip install 'retrainer[litert]'`): TensorFlow's interpreter then
    _LiteRTInterpreter = None


def new_interpreter(model: bytes, threads: Optional[int] = None) -> Any:
    """An interpreter for the `.tflite` bytes `model` (tensors not yet allocated).

    Args:
        model: the flatbuffer.
        threads: CPU threads for its kernels; None lets the runtime choose.

    Raises:
        ValueError, RuntimeError: the runtime cannot load `model` (truncated, corrupt, unknown op).
    """
    if _LiteRTInterpreter is not None:
        return _LiteRTInterpreter(model_content=model, num_threads=threads)
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated")
        return tf.lite.Interpreter(model_content=model, num_threads=threads)


class BatchInterpreter:
    """An interpreter of a one-input, one-output `.tflite`, re-planned only when the batch size
    changes; called by one thread at a time.

    Raises (on creation):
        ValueError, RuntimeError: as `new_interpreter`.
    """

    def __init__(self, model: bytes, threads: Optional[int] = None) -> None:
        self._interpreter = new_interpreter(model, threads)
        details = self._interpreter.get_input_details()[0]
        self._input, self.input_dtype = details["index"], np.dtype(details["dtype"])
        self.input_shape = tuple(int(size) for size in details["shape"])  # as the model has it
        output = self._interpreter.get_output_details()[0]
        self._output = output["index"]
        self._scale, self._zero_point = output["quantization"]  # (0.0, 0): not quantized
        self._rows = 0

    def plan(self, shape: tuple[int, ...]) -> None:
        """Allocate the tensors for input batches of `shape` (a call does when its batch size
        is another than the last one's)."""
        if shape[0] != self._rows:  # re-plan only when the batch size changes
            self._interpreter.resize_tensor_input(self._input, shape)
            self._interpreter.allocate_tensors()
            self._rows = shape[0]

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        """The model's output for the batch `inputs` (its first axis: the rows) as float32; a
        quantized integer output dequantized ((q - zero point) x scale)."""
        self.plan(inputs.shape)
        self._interpreter.set_tensor(self._input, inputs)
        self._interpreter.invoke()
        output = self._interpreter.get_tensor(self._output)
        if self._scale and output.dtype != np.float32:
            return (output.astype(np.float32) - np.float32(self._zero_point)) * np.float32(
                self._scale)
        return output.astype(np.float32, copy=True)


# Builtin operator codes of the TFLite schema: the pooling, and what may follow it; the input's
# requantizing and the constant shifts that may follow it.
_MEAN = 40
_QUANTIZE = 114
_REQUANTIZING = frozenset({6, _QUANTIZE})  # DEQUANTIZE, QUANTIZE
_ADD, _SUB = 0, 41
# TensorType values of the TFLite schema
_UINT8, _INT8 = 3, 9
# How far from a whole number of steps a constant shift may be and still be none (a step: 1)
_SHIFT_TOLERANCE = 1e-3


def int8_input_model(model: bytes) -> Optional[bytes]:
    """`model` (a `.tflite` whose first operator quantizes its one uint8 input, scale s and zero
    point 0, to int8 of the same scale and zero point -128: q - 128) without that operator, and
    without an ADD or SUB of a constant after it that leaves every value as it is (a
    normalization such as x - 127/255 folded into the zero point): its input is then the int8
    tensor they made, whose values are the uint8 bytes with the top bit flipped (`pixels ^ 0x80`
    viewed as int8). The operators after them compute the same, so the outputs are the same;
    the two (each a pass over every input byte) were ~3 % of the int8 extractor's time. They are
    dropped in place: the operator vector starts that many entries later, its new length where
    the last dropped entry was (the entries are offsets from their own position). None when the
    model does not start so.
    """
    root = fields.root(model)
    subgraphs = fields.tables(root, 2)  # Model.subgraphs
    if len(subgraphs) != 1 or fields.tables(root, 7):  # one graph; no SignatureDefs (they name
        return None  # its input by index)
    main = subgraphs[0]
    operators = _operators(root, main)
    graph_inputs = fields.numbers(main, 1, number_types.Int32Flags)  # SubGraph.inputs
    tensors = fields.tables(main, 0)  # SubGraph.tensors
    if len(operators) < 2 or len(graph_inputs) != 1:
        return None
    code, inputs, outputs, _ = operators[0]
    pixels = _quantization(tensors[graph_inputs[0]])
    signed = _quantization(tensors[outputs[0]]) if len(outputs) == 1 else None
    if code != _QUANTIZE or inputs != graph_inputs or pixels is None or signed is None \
            or (pixels[0], pixels[2], signed[0], signed[2]) != (_UINT8, 0, _INT8, -128) \
            or pixels[1] != signed[1]:
        return None
    dropped, value = 1, outputs[0]
    shifted = _unshifted(root, tensors, operators[1], value)
    if shifted is not None:
        dropped, value = 2, shifted
    made = {graph_inputs[0], *(output for operator in operators[:dropped]
                               for output in operator.outputs)} - {value}
    if any(made & set(operator.inputs) for operator in operators[dropped:]):
        return None  # a dropped operator's tensor is read later
    patched = bytearray(model)
    field = main.Pos + fields.position(main, 3)  # SubGraph.operators' offset, from itself
    length = main.Vector(fields.position(main, 3)) + 4 * (dropped - 1)  # the last dropped entry
    struct.pack_into("<I", patched, field, length - field)
    struct.pack_into("<I", patched, length, len(operators) - dropped)
    struct.pack_into("<i", patched, main.Vector(fields.position(main, 1)), value)
    return bytes(patched)


class _Operator(NamedTuple):
    """One Operator of a subgraph: its builtin code (-1 if its code index is out of range), the
    tensors it reads and writes, and its options table (None when absent)."""

    code: int
    inputs: list[int]
    outputs: list[int]
    options: Any


def _operators(root: Any, subgraph: Any) -> list[_Operator]:
    """`subgraph`'s operators in order, their codes looked up in the model's code table."""
    codes = [_builtin_code(code) for code in fields.tables(root, 1)]  # Model.operator_codes
    found = []
    for operator in fields.tables(subgraph, 3):  # SubGraph.operators
        index = fields.scalar(operator, 0, number_types.Uint32Flags)
        found.append(_Operator(codes[index] if index < len(codes) else -1,
                               fields.numbers(operator, 1, number_types.Int32Flags),
                               fields.numbers(operator, 2, number_types.Int32Flags),
                               fields.table(operator, 5) if fields.position(operator, 5) else None))
    return found


def _unshifted(root: Any, tensors: list[Any], operator: _Operator, value: int) -> Optional[int]:
    """The output of `operator` when it adds a scalar int8 constant to (or subtracts it from)
    the int8 tensor `value`, with no activation, and every value comes out as it went in: the
    same scale, and the constant's real value a whole number of steps that the zero points'
    difference takes back; else None."""
    code, inputs, outputs, options = operator
    if code not in (_ADD, _SUB) or len(inputs) != 2 or inputs[0] != value or len(outputs) != 1:
        return None
    if options is not None and fields.scalar(options, 0, number_types.Int8Flags):
        return None  # Add/SubOptions.fused_activation_function: not NONE
    constant = tensors[inputs[1]]
    given, added, made = (_quantization(tensors[index]) for index in (value, inputs[1], outputs[0]))
    buffers = fields.tables(root, 4)  # Model.buffers
    slot = fields.scalar(constant, 2, number_types.Uint32Flags)  # Tensor.buffer
    data = fields.numbers(buffers[slot], 0, number_types.Uint8Flags) if slot < len(buffers) else []
    if given is None or added is None or made is None or len(data) != 1 \
            or fields.numbers(constant, 0, number_types.Int32Flags) not in ([], [1]) \
            or {given[0], added[0], made[0]} != {_INT8} \
            or not np.isclose(given[1], made[1], rtol=1e-6, atol=0.0):
        return None
    steps = added[1] * ((data[0] - 256 if data[0] > 127 else data[0]) - added[2]) / made[1]
    steps = steps if code == _ADD else -steps
    return outputs[0] if abs(steps + made[2] - given[2]) < _SHIFT_TOLERANCE else None


def _quantization(tensor: Any) -> Optional[tuple[int, float, int]]:
    """(TensorType, scale, zero point) of a per-tensor quantized tensor; None if not so."""
    if not fields.position(tensor, 4):  # Tensor.quantization
        return None
    parameters = fields.table(tensor, 4)
    scales = fields.numbers(parameters, 2, number_types.Float32Flags)
    zero_points = fields.numbers(parameters, 3, number_types.Int64Flags)
    if len(scales) != 1 or len(zero_points) != 1:
        return None
    return fields.scalar(tensor, 1, number_types.Int8Flags), float(scales[0]), int(zero_points[0])


def pooled_map_model(model: bytes) -> Optional[bytes]:
    """`model` (a one-output `.tflite` whose output is the spatial mean of its last [N, h, w, K]
    map, as an extractor's pooled vector is) with that map as its output instead: the same
    operators and weights, the output's index changed in place (the map of an int8 model comes
    out int8, with its scale and zero point). None unless the output is its last MEAN's, at most
    (de)quantized after it (anything else after the pooling would make the map's class
    activation another than the graph's).
    """
    root = fields.root(model)
    subgraphs = fields.tables(root, 2)  # Model.subgraphs
    if not subgraphs:
        return None
    main = subgraphs[0]
    operators = _operators(root, main)
    means = [index for index, operator in enumerate(operators) if operator.code == _MEAN]
    offset = fields.position(main, 2)  # SubGraph.outputs
    if not means or not offset or main.VectorLen(offset) != 1:
        return None
    reached = operators[means[-1]].outputs
    for operator in operators[means[-1] + 1:]:
        if set(operator.inputs) & set(reached):
            if operator.code not in _REQUANTIZING:
                return None
            reached = operator.outputs
    if reached != fields.numbers(main, 2, number_types.Int32Flags):
        return None
    feature_map = operators[means[-1]].inputs[0]  # the MEAN's input
    patched = bytearray(model)
    struct.pack_into("<i", patched, main.Vector(offset), feature_map)
    return bytes(patched)


def _builtin_code(code: Any) -> int:
    """An OperatorCode's builtin code (the larger of its old int8 field and its int32 one)."""
    return max(fields.scalar(code, 0, number_types.Int8Flags),
               fields.scalar(code, 3, number_types.Int32Flags))


def full_integer_model(
    concrete_function: Any,
    representative: Iterable[list[np.ndarray]],
    trackable: Optional[tf.Module] = None,
    uint8_input: bool = False,
    uint8_output: bool = False,
) -> bytes:
    """Convert a traced function to a full-integer (int8 weights and activations) TFLite model.

    Used by the int8 export and by the int8 extraction engine (`retrainer.engines.int8`).

    Args:
        concrete_function: a `tf.function`'s concrete function, one image input.
        representative: calibration inputs, each a one-element list shaped like the input.
        trackable: the module owning the function's variables (the non-deprecated converter path).
        uint8_input: uint8 input (its scale and zero point come from the calibration range);
            otherwise it keeps the function's dtype.
        uint8_output: uint8 output (the export); otherwise it keeps the function's dtype.

    Returns:
        The .tflite flatbuffer.

    Raises:
        Exception: whatever the converter raises for ops it cannot quantize or convert.
    """
    import tensorflow as tf

    samples = list(representative)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete_function], trackable)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: iter(samples)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if uint8_input:
        converter.inference_input_type = tf.uint8
    if uint8_output:
        converter.inference_output_type = tf.uint8
    return bytes(converter.convert())
