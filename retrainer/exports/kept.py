"""Frozen graphs a rerun keeps: tracing and freezing the classifier (about 0.5 s on
EfficientNet-Lite0, plus TensorFlow's import) is skipped when the graph file already at the
output path is the one the same inputs froze to; and, on a machine that traced a graph of the
same structure before, a new graph is written from that graph's template
(`formats.graph_template`, kept in the user's cache) without TensorFlow.

The inputs are named without TensorFlow: retrainer's code and TensorFlow's version, the
extractor (its spec id, whose weights it pins, or a tuned copy's digest), the head's weights, the
novelty references and the graph's metadata. Their hash maps to the SHA-256 of the graph they
made (`cache.layout.frozen_graph_record_path`), and the file must have that SHA-256.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence

import numpy as np

from retrainer.cache.layout import frozen_graph_record_path, graph_template_path
from retrainer.cache.memo import KeptOutputs, Memo, arrays_digest, memo_key
from retrainer.exports.options import NO_TTA
from retrainer.formats.extractor_spec import ExtractorSpec
from retrainer.formats.graph_contract import graph_metadata, metadata_path
from retrainer.formats.graph_template import (
    BIASES,
    NOVELTY_REFERENCES,
    WEIGHTS,
    fill_template,
    make_template,
)
from retrainer.io.atomic import write_text_atomically
from retrainer.io.host import tensorflow_version, user_cache_dir
from retrainer.io.storage import AnyPath
from retrainer.training.head_types import Head
from retrainer.training.novelty import Novelty

_TEMPLATE_KIND = "graph template v2"  # how templates are sealed in the user's cache


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


def classifier_metadata(spec: ExtractorSpec, labels: Sequence[str], final_tensor_name: str,
                        tta: str, thresholds: Optional[Sequence[float]] = None,
                        novelty: Optional[Novelty] = None, step: Optional[int] = None,
                        tuned_digest: Optional[str] = None) -> dict[str, Any]:
    """The `.meta.json` contract of a classifier graph (`formats.graph_contract.graph_metadata`)
    of `spec`'s extractor, or of its fine-tuned copy whose weights' digest is `tuned_digest`."""
    extractor: dict[str, Any] = {"name": spec.name, "id": spec.id}
    if tuned_digest is not None:  # its vectors are no longer those of spec.id's cache namespace
        extractor = {"name": spec.name, "id": f"{spec.id}-tuned-{tuned_digest}",
                     "fine_tuned_from": spec.id}
    return graph_metadata(extractor, labels, final_tensor_name, spec.input_size,
                          None if tta == NO_TTA else tta,
                          None if thresholds is None else [float(t) for t in thresholds],
                          None if novelty is None else novelty.to_json(), step)


def write_sidecar(graph_path: os.PathLike[str] | str, metadata: dict[str, Any],
                  sha256: str) -> AnyPath:
    """Write the graph's `.meta.json` sidecar: `metadata` plus the graph's SHA-256 (`sha256`,
    hex: label-image refuses a graph whose sidecar names other bytes); returns its path."""
    sidecar = metadata_path(graph_path)
    document = {**metadata, "graph_sha256": sha256}
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

    def remember(self, key: str, sha256: str) -> None:
        """Record the graph `key`'s inputs froze to, by its SHA-256 (hex; a failed write is a
        warning and costs the next run its tracing)."""
        self._kept.remember_digests(key, [sha256])


class GraphTemplates:
    """The frozen graphs' templates kept on this machine (`formats.graph_template`), one per
    graph structure: what a graph is traced from, but for the head's and novelty's values."""

    def __init__(self, spec: ExtractorSpec, final_tensor_name: str, tta: str,
                 head: Head, novelty: Optional[Novelty]) -> None:
        self._memo = Memo(user_cache_dir(), graph_template_path)
        self._key = memo_key("frozen graph template", tensorflow_version(), spec.id,
                             spec.input_size, final_tensor_name, tta, head.objective.name,
                             None if novelty is None else novelty.k)
        self._arrays = {WEIGHTS: head.weights, BIASES: head.biases}
        if novelty is not None:
            self._arrays[NOVELTY_REFERENCES] = novelty.references

    def kept(self) -> bool:
        """Whether a template is kept (not yet read: it may still prove damaged)."""
        return self._memo.holds(self._key)

    def graph(self) -> Optional[bytes]:
        """The frozen graph of these values from a kept template; None without a usable one."""
        template = self._memo.read_sealed(self._key, _TEMPLATE_KIND)
        return None if template is None else fill_template(template, self._arrays)

    def remember(self, graph: bytes) -> None:
        """Keep the template of `graph`, the traced graph of these values (when one can be
        made: see `formats.graph_template.make_template`)."""
        template = make_template(graph, self._arrays)
        if template is not None:
            self._memo.write_sealed(self._key, _TEMPLATE_KIND, *template)
