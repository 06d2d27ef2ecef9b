"""Model files are programs: check one before anything in it runs.

A frozen graph, a SavedModel, a TF Hub module, a `.tflite` or an `.onnx` file is read as data
(protobuf or flatbuffer parsing; nothing in it is imported into a runtime or run) and refused with
`UntrustedModelError` (exit 4) when it holds an op outside retrainer's allowlist of side-effect-free
ops, restores variables from outside its own folder, or declares tensors beyond the resource
limits. Every loader of a model a user hands over calls `check_model` first. docs/security.md says
what is checked and what is not.
"""

from retrainer.errors import UntrustedModelError
from retrainer.security.check import KINDS, check_model, model_kind, model_ops
from retrainer.security.limits import ResourceLimits

__all__ = ["KINDS", "ResourceLimits", "UntrustedModelError", "check_model", "model_kind",
           "model_ops"]
