"""The TensorFlow ops a model may contain: side-effect-free math, array, image and network ops.

Measured, not guessed: this is the union of the ops found in every model retrainer produces or
reads here (`scripts/measure_model_ops.py` lists them per model; docs/security.md has the table),
plus the same families' TF1 spellings that TF1 Hub modules use. None of these ops touches files,
the network, other processes or Python: they compute tensors from tensors and from the model's own
variables. Anything else -- `WriteFile`, `PrintV2`, `ReadFile`, `PyFunc`, dataset readers, summary
writers, `ImmutableConst` (maps a file), collectives -- refuses the model unless it is trusted.
"""

from __future__ import annotations

ALLOWED_OPS: frozenset[str] = frozenset({
    # graph plumbing: inputs, constants, identity, grouping, calls of the model's own functions
    "Placeholder", "PlaceholderWithDefault", "Const", "Identity", "IdentityN", "NoOp",
    "StopGradient", "PartitionedCall", "StatefulPartitionedCall",
    # the model's own variables (TF2 resource variables, TF1 reference variables)
    "VarHandleOp", "ReadVariableOp", "AssignVariableOp", "VarIsInitializedOp",
    # math
    "AddV2", "Add", "Sub", "Mul", "RealDiv", "Maximum", "Minimum", "Rsqrt", "Sqrt", "Square",
    "MatMul", "BatchMatMulV2", "Mean", "Sum", "Max",
    # array
    "Reshape", "Squeeze", "ExpandDims", "ConcatV2", "Pack", "Shape", "StridedSlice", "Cast",
    "Fill",
    # neural network
    "Conv2D", "DepthwiseConv2dNative", "BiasAdd", "Relu", "Relu6", "Sigmoid", "Softmax",
    "AvgPool", "MaxPool", "FusedBatchNormV3",
})

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
    if effect is None and op.startswith(("Flex", "_")):
        effect = "an internal or delegated op"
    return f"{op} ({effect})" if effect else op
