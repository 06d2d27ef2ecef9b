"""What an exported graph promises its consumers; shared by `export` and `classify`.

Kept free of TensorFlow so `label-image` can read it before deciding to load the model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from retrainer.errors import ModelError
from retrainer.io.atomic import write_text_atomically
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


def graph_metadata(extractor: dict[str, Any], labels: Sequence[str], final_tensor_name: str,
                   input_size: tuple[int, int], tta: Optional[str] = None,
                   thresholds: Optional[Sequence[float]] = None,
                   novelty: Optional[dict[str, Any]] = None,
                   step: Optional[int] = None) -> dict[str, Any]:
    """The `<graph>.meta.json` contract (see docs/retrain.md), without the graph's SHA-256.

    Args:
        extractor: {"name", "id"} (and "fine_tuned_from" for a tuned copy).
        labels: class names in output order.
        final_tensor_name: the probabilities' op.
        input_size: (H, W).
        tta: the test-time augmentation inside the graph; None: none.
        thresholds: a multi-label head's per-class thresholds.
        novelty: the novelty score's description (`Novelty.to_json()`); None: no such output.
        step: an intermediate graph's training step.
    """
    height, width = input_size
    document: dict[str, Any] = {
        "format": GRAPH_FORMAT,
        "input_layer": INPUT_OP,
        "output_layer": final_tensor_name,
        "input_height": height,
        "input_width": width,
        "input_mean": INPUT_MEAN,
        "input_std": INPUT_STD,
        "labels": list(labels),
        "extractor": extractor,
    }
    if tta is not None:
        document["tta"] = tta
    if thresholds is not None:
        document["multi_label"] = {"thresholds": dict(zip(labels, thresholds))}
    if novelty is not None:
        document["novelty"] = {"output_layer": NOVELTY_OUTPUT, **novelty}
    if step is not None:
        document["step"] = step
    return document


def write_labels(path: os.PathLike[str] | str, labels: Sequence[str]) -> None:
    """The labels file: one label per line in class-index order, trailing newline."""
    write_text_atomically(path, "".join(f"{label}\n" for label in labels))


def graph_sha256(graph: bytes) -> str:
    """The SHA-256 (hex) of a frozen graph's bytes: its sidecar's `graph_sha256`, which
    label-image checks, and the name of its heat maps (17 MB for EfficientNet-Lite0: ~20 ms)."""
    return hashlib.sha256(graph).hexdigest()


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
