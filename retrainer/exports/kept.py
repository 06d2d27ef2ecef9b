"""Frozen graphs a rerun keeps: tracing and freezing the classifier (about 0.5 s on
EfficientNet-Lite0, plus TensorFlow's import) is skipped when the graph file already at the
output path is the one the same inputs froze to.

The inputs are named without TensorFlow: retrainer's code and TensorFlow's version, the
extractor (its spec id, whose weights it pins, or a tuned copy's digest), the head's weights, the
novelty references and the graph's metadata. Their hash maps to the SHA-256 of the graph they
made (`cache.layout.frozen_graph_record_path`), and the file must have that SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Optional

import numpy as np

from retrainer.cache.layout import frozen_graph_record_path
from retrainer.cache.memo import KeptOutputs, arrays_digest, memo_key
from retrainer.formats.graph_contract import metadata_path
from retrainer.io.atomic import write_text_atomically
from retrainer.io.host import tensorflow_version
from retrainer.io.storage import AnyPath


def frozen_graph_key(extractor_id: str, head_arrays: tuple[Any, ...], metadata: dict[str, Any],
                     novelty_references: Optional[np.ndarray] = None) -> str:
    """What a frozen graph is made from (see the module docstring).

    Args:
        extractor_id: the spec id, or a fine-tuned copy's (`<id>-tuned-<digest>`).
        head_arrays: the head's weights and biases (arrays or variables).
        metadata: the graph's metadata (`formats.graph_contract.graph_metadata`).
        novelty_references: float32 [M, D], the novelty output's reference vectors.
    """
    arrays = (*head_arrays, *(() if novelty_references is None else (novelty_references,)))
    return memo_key("frozen graph", tensorflow_version(), extractor_id, arrays_digest(arrays),
                    json.dumps(metadata, sort_keys=True))


def write_sidecar(graph_path: os.PathLike[str] | str, metadata: dict[str, Any],
                  graph: bytes) -> AnyPath:
    """Write the graph's `.meta.json` sidecar: `metadata` plus the graph's SHA-256 (label-image
    refuses a graph whose sidecar names other bytes); returns its path."""
    sidecar = metadata_path(graph_path)
    document = {**metadata, "graph_sha256": hashlib.sha256(graph).hexdigest()}
    write_text_atomically(sidecar, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return sidecar


class KeptGraphs:
    """The frozen graphs' records under a local cache root (None or a URL: nothing is kept)."""

    def __init__(self, cache_root: Optional[os.PathLike[str] | str]) -> None:
        self._kept = KeptOutputs(cache_root, frozen_graph_record_path)

    def read(self, key: str, path: os.PathLike[str] | str) -> Optional[bytes]:
        """The bytes of the graph at `path` if they are what `key`'s inputs froze to."""
        kept = self._kept.read(key, [path])
        return None if kept is None else kept[0]

    def remember(self, key: str, data: bytes) -> None:
        """Record the graph `key`'s inputs froze to (a failed write is a warning and costs the
        next run its tracing)."""
        self._kept.remember(key, [data])
