"""What an exported graph promises its consumers; shared by `export` and `classify`.

Kept free of TensorFlow so `label-image` can read it before deciding to load the model.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Sequence

from retrainer.errors import ModelError
from retrainer.io.storage import AnyPath, as_path

GRAPH_FORMAT = "retrainer-graph/1"
INPUT_OP = "Placeholder"
# label_image.py feeds (pixel - input_mean) / input_std with pixels in 0..255: that is [0, 1].
INPUT_MEAN = 0.0
INPUT_STD = 255.0
METADATA_SUFFIX = ".meta.json"
OUTPUT_OP = "final_result"  # retrain.py's --final_tensor_name
# The novelty score's op, SavedModel/TFLite signature output and ONNX output: float32 [N].
NOVELTY_OUTPUT = "novelty"
# Where `retrain` writes by default, so that `label-image photo.jpg` finds it (retrain.py wrote
# to fixed /tmp paths, which clashed between users: tensorflow/hub#302).
DEFAULT_OUTPUT_DIR = Path("retrain_output")
DEFAULT_GRAPH = DEFAULT_OUTPUT_DIR / "output_graph.pb"
LABELS_FILENAME = "output_labels.txt"  # label-image looks for it next to the graph


def metadata_path(graph_path: os.PathLike[str] | str) -> AnyPath:
    """Where the sidecar of a graph lives: out.pb -> out.pb.meta.json."""
    return as_path(f"{os.fspath(graph_path)}{METADATA_SUFFIX}")


# Every .tflite flatbuffer carries this file identifier at bytes 4..8; label-image tells a .tflite
# from a frozen graph by it, not by the file name.
TFLITE_IDENTIFIER = b"TFL3"
SAVED_MODEL_FILE = "saved_model.pb"  # a folder holding it is a SavedModel
SAVED_MODEL_METADATA = "metadata.json"  # in a SavedModel's assets/: the sidecar's contract

# ONNX (exports/onnx.py writes, classify/onnx.py reads): input float32 [N, H, W, 3] RGB in [0, 1],
# output float32 [N, C] probabilities, both by name; metadata_props say the rest.
ONNX_FORMAT = "retrainer-onnx/1"
ONNX_INPUT = "images"
ONNX_OUTPUT = "probabilities"
ONNX_PACKAGES = ("tf2onnx", "onnx", "onnxruntime")  # the `onnx` extra
ONNX_INSTALL = "pip install 'retrainer[onnx]'"
# A serialized ModelProto starts with its ir_version (field 1, a varint: key 0x08, a small value).
_ONNX_IR_VERSION_KEY = 0x08
_ONNX_MAX_IR_VERSION = 64


def looks_like_onnx(data: bytes) -> bool:
    """True when `data` starts like a serialized ONNX ModelProto.

    ONNX writes `ir_version`, a small varint, first. A frozen GraphDef starts with a length-delimited
    `node` (key 0x0a) and a .tflite with a 4-byte offset, so two bytes decide; a truncated or damaged
    ONNX file is still recognised, and its loader says what is wrong with it.
    """
    return (len(data) >= 2 and data[0] == _ONNX_IR_VERSION_KEY
            and 1 <= data[1] <= _ONNX_MAX_IR_VERSION)


def require_onnx_extra(what: str, packages: Sequence[str] = ONNX_PACKAGES) -> None:
    """Raise unless `packages` of the `onnx` extra are installed (nothing is imported).

    Raises:
        ModelError: naming what needed them, the missing packages and the pip command.
    """
    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelError(f"{what} needs the onnx extra ({', '.join(missing)} not installed): "
                         f"{ONNX_INSTALL}")
