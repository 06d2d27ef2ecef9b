"""What an ONNX export promises its readers, and how to tell one from other model files.

Shared by the export (`retrainer.exports.onnx`), the option checks and `label-image`
(`retrainer.classify.onnx`); free of TensorFlow and of the `onnx` extra, so it can run before
either is loaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

from retrainer.errors import ModelError
from retrainer.exports.quantization import INT8, NONE, export_paths

ONNX_FORMAT = "retrainer-onnx/1"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
ONNX_MODES = (NONE, INT8)
EXTRA_PACKAGES = ("tf2onnx", "onnx", "onnxruntime")  # the `onnx` extra
RUNTIME_PACKAGES = ("onnxruntime",)  # what label-image needs to run a .onnx
INSTALL_EXTRA = "pip install 'retrainer[onnx]'"

# A serialized ModelProto starts with its ir_version (field 1, a varint: key 0x08, a small value).
_IR_VERSION_KEY = 0x08
_MAX_IR_VERSION = 64


def require_onnx_extra(what: str, packages: Sequence[str] = EXTRA_PACKAGES) -> None:
    """Raise unless `packages` of the `onnx` extra are installed (nothing is imported).

    Raises:
        ModelError: naming what needed them, the missing packages and the pip command.
    """
    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelError(f"{what} needs the onnx extra ({', '.join(missing)} not installed): "
                         f"{INSTALL_EXTRA}")


def onnx_paths(path: Path, modes: Sequence[str]) -> dict[str, Path]:
    """Where each mode's file goes: `path` for one mode; for several, `<stem>_<mode>.onnx`."""
    return export_paths(path, modes, ".onnx")


def looks_like_onnx(data: bytes) -> bool:
    """True when `data` starts like a serialized ONNX ModelProto.

    ONNX writes `ir_version`, a small varint, first. A frozen GraphDef starts with a length-delimited
    `node` (key 0x0a) and a .tflite with a 4-byte offset, so two bytes decide; a truncated or damaged
    ONNX file is still recognised, and its loader says what is wrong with it.
    """
    return len(data) >= 2 and data[0] == _IR_VERSION_KEY and 1 <= data[1] <= _MAX_IR_VERSION
