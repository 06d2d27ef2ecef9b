"""The TensorFlow ops a model may contain: side-effect-free math, array, image and network ops.

Measured, not guessed: the union of the ops found in every model retrainer produces or reads here
(`scripts/measure_model_ops.py` lists them per model; docs/security.md has the table), plus the
same families' other spellings (TF1 and TF2 forms of one operation). None of these ops touches
files, the network, other processes or Python: they compute tensors from tensors and from the
model's own variables. Anything else -- `WriteFile`, `PrintV2`, `ReadFile`, `PyFunc`, dataset readers, summary
writers, `ImmutableConst` (maps a file), collectives -- refuses the model unless it is trusted.
"""

from __future__ import annotations

# Measured (scripts/measure_model_ops.py): the union of the ops in retrainer's exports of every
# built-in and keras: family and in the test suite's TF2 / TF1 Hub-format modules.
MEASURED_OPS = frozenset({
    # graph plumbing: inputs, constants, identity, calls of the model's own functions
    "Placeholder", "PlaceholderWithDefault", "Const", "Identity", "IdentityN", "NoOp",
    "StopGradient", "StatefulPartitionedCall",
    # the model's own variables: TF2 resource variables, TF1 reference variables
    "VarHandleOp", "ReadVariableOp", "AssignVariableOp", "ResourceGather", "VariableV2", "Assign",
    # control flow: TF2 loops (the bytes signature's map_fn, a test module's tf.range loop),
    # TF1 conditionals (batch norm)
    "StatelessWhile", "While", "Range", "Switch", "Merge", "Less", "NotEqual", "LogicalAnd",
    "TensorListReserve", "TensorListFromTensor", "TensorListGetItem", "TensorListSetItem",
    "TensorListStack",
    # elementwise and reduction math
    "AddV2", "Sub", "Mul", "RealDiv", "Neg", "Maximum", "Minimum", "Square", "Sqrt", "Rsqrt",
    "SquaredDifference", "FloorDiv", "FloorMod", "Erfc", "Sigmoid", "Tanh", "Mean", "Sum", "Max",
    "Prod", "ArgMax", "MatMul",
    "TopKV2",  # the novelty output: the k nearest training vectors
    # arrays
    "Shape", "Cast", "Reshape", "Squeeze", "ExpandDims", "Pack", "ConcatV2", "StridedSlice",
    "GatherV2", "Transpose", "Pad",
    # neural network
    "Conv2D", "DepthwiseConv2dNative", "BiasAdd", "Relu", "Relu6", "Softmax", "AvgPool",
    "MaxPool", "FusedBatchNorm",
    # images: the SavedModel's bytes signature decodes and resizes in the graph
    "DecodeImage", "ScaleAndTranslate", "ResizeBilinear",
    # dropout in the training-mode traces of Keras-made TF2 modules (as TF Hub's were made)
    "RandomUniform",
})

# Not in our measurements, allowed as the same families' other spellings: TF1-era graphs write
# Add/FusedBatchNormV3/IsVariableInitialized and loops as Enter/Exit/NextIteration; TF2 graphs
# write If/While and PartitionedCall; image modules pad, tile, slice and resize.
EQUIVALENT_OPS = frozenset({
    "Add", "AddN", "BiasAddV1", "FusedBatchNormV2", "FusedBatchNormV3", "IsVariableInitialized",
    "VarIsInitializedOp", "PartitionedCall", "StatelessIf", "If", "Enter", "Exit",
    "NextIteration", "LoopCond", "Fill", "Tile", "Slice", "Split", "SplitV", "Unpack",
    "ZerosLike", "OnesLike", "Select", "SelectV2", "Greater", "GreaterEqual", "LessEqual",
    "Equal", "Exp", "Log", "Abs", "Pow", "Min", "Elu", "LeakyRelu", "Softplus",
    "ResizeNearestNeighbor", "ResizeBicubic", "DecodeJpeg", "DecodePng", "MirrorPad",
    "ClipByValue", "BatchMatMulV2", "Einsum", "Erf",
    "RandomStandardNormal", "TruncatedNormal", "StatelessRandomUniformV2",
    "StatelessRandomGetKeyCounter", "AssignSubVariableOp", "AssignAddVariableOp",
})

ALLOWED_OPS: frozenset[str] = MEASURED_OPS | EQUIVALENT_OPS

# Read a checkpoint: allowed only where a TF1 saver's restore op reads the file the loader feeds
# it (the model's own variables/ folder); anywhere else they could read any checkpoint on disk.
RESTORE_OPS = frozenset({"RestoreV2", "Restore", "RestoreSlice"})

# What the ops people most often find in hostile models do, for the error message.
_EFFECTS = {
    "WriteFile": "writes files",
    "ReadFile": "reads files",
    "MatchingFiles": "lists files",
    "DeleteFile": "deletes files",
    "PrintV2": "prints, possibly to a file://",
    "Print": "prints to stderr",
    "SaveV2": "writes checkpoint files",
    "Save": "writes checkpoint files",
    "SaveSlices": "writes checkpoint files",
    "MergeV2Checkpoints": "writes and deletes checkpoint files",
    "ImmutableConst": "maps a file into memory",
    "PyFunc": "runs Python code",
    "PyFuncStateless": "runs Python code",
    "EagerPyFunc": "runs Python code",
    "InitializeTableFromTextFile": "reads files",
    "InitializeTableFromTextFileV2": "reads files",
    "CreateSummaryFileWriter": "writes files",
    "WriteSummary": "writes files",
    "DebugIdentityV2": "writes debug files",
}


def describe(op: str) -> str:
    """"WriteFile (writes files)"; just the name for ops without a known effect."""
    effect = _EFFECTS.get(op)
    if effect is None and op.startswith("_"):
        effect = "an internal op"
    return f"{op} ({effect})" if effect else op
