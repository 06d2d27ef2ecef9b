"""`check_model`: which kind of model file a path holds, and the one check for each kind.

`model_ops` lists the ops a graph would run (to measure the allowlist, `allowlist.py`).
"""

from __future__ import annotations

import os
from typing import Optional, Union

from retrainer.errors import ModelError, UsageError
from retrainer.io.storage import AnyPath, as_path, open_for_reading
from retrainer.security.frozen_graph import check_frozen_graph
from retrainer.security.limits import Budget, ResourceLimits
from retrainer.security.onnx_model import check_onnx
from retrainer.security.saved_model import check_saved_model
from retrainer.security.tflite import check_tflite

KINDS = ("graph", "saved_model", "tflite", "onnx")
_TFLITE_IDENTIFIER = b"TFL3"  # bytes 4..8 of every .tflite
_ONNX_SUFFIX = ".onnx"


def check_model(path: Union[str, os.PathLike[str]], kind: Optional[str] = None, *,
                trust: bool = False, signature: Optional[str] = None,
                limits: Optional[ResourceLimits] = None) -> None:
    """Refuse a model file before anything in it runs; return quietly when it passes.

    Args:
        path: a frozen graph (.pb), a SavedModel or TF Hub module folder (TF2 or TF1 format), a
            .tflite or an .onnx file; local or a URL.
        kind: one of KINDS; None: `model_kind(path)`.
        trust: the user vouches for the file (--trust_model): nothing is checked.
        signature: for a SavedModel, the signature the caller will run (e.g. "serving_default");
            None checks every entry point the model exposes.
        limits: resource limits; None: `ResourceLimits.from_environment()`.

    Raises:
        UntrustedModelError (a ModelError, exit 4): one line naming the first offending op or
            tensor, its node and the model file, and how to trust the file.
        ModelError: the file cannot be read as that kind of model.
        UsageError: unknown kind, or a malformed limit in the environment.
    """
    if trust:
        return
    path = as_path(path)
    kind = kind or model_kind(path)
    budget = Budget(limits or ResourceLimits.from_environment())
    if kind == "saved_model":
        check_saved_model(path, signature, budget)
        return
    if kind not in KINDS:
        raise UsageError(f"model kind must be one of {list(KINDS)}. Received: kind={kind!r}")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ModelError(f"cannot read model {path}: {error.strerror or error}") from None
    if kind == "graph":
        check_frozen_graph(path, data, budget)
    elif kind == "tflite":
        check_tflite(path, data, budget)
    else:
        check_onnx(path, data, budget)


def model_ops(path: Union[str, os.PathLike[str]],
              signature: Optional[str] = None) -> frozenset[str]:
    """The TensorFlow ops a frozen graph or SavedModel would run (what `check_model` checks).

    Used to measure the allowlist (scripts/measure_model_ops.py). Refuses nothing but unreadable
    files; resource limits are not applied.
    """
    path = as_path(path)
    budget = Budget(ResourceLimits(max_tensor_bytes=1 << 62, max_model_bytes=1 << 62))
    if model_kind(path) == "saved_model":
        return frozenset(check_saved_model(path, signature, budget, allowed=None))
    return frozenset(check_frozen_graph(path, path.read_bytes(), budget, allowed=None))


def model_kind(path: AnyPath) -> str:
    """What `path` holds, by content: a folder is a SavedModel, "TFL3" at bytes 4..8 a .tflite,
    an .onnx suffix ONNX, anything else a frozen graph."""
    path = as_path(path)
    if path.is_dir():
        return "saved_model"
    if path.name.lower().endswith(_ONNX_SUFFIX):
        return "onnx"
    try:
        with open_for_reading(path) as stream:
            head = stream.read(8)
    except OSError:
        return "graph"  # the loader reports the missing file
    return "tflite" if head[4:8] == _TFLITE_IDENTIFIER else "graph"
