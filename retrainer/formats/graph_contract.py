"""What an exported graph promises its consumers; shared by `export` and `classify`.

Kept free of TensorFlow so `label-image` can read it before deciding to load the model.
"""

from __future__ import annotations

import os
from pathlib import Path

from retrainer.io.storage import AnyPath, as_path

GRAPH_FORMAT = "retrainer-graph/1"
INPUT_OP = "Placeholder"
# label_image.py feeds (pixel - input_mean) / input_std with pixels in 0..255: that is [0, 1].
INPUT_MEAN = 0.0
INPUT_STD = 255.0
METADATA_SUFFIX = ".meta.json"
OUTPUT_OP = "final_result"  # retrain.py's --final_tensor_name
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
