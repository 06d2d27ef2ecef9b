"""Frozen graphs and images for the label-image tests (owned by the classification stage).

- `tiny_graph`: a hand-built graph in the style of TF Hub's retrain.py (its `final_result` is the
  Softmax op itself), with labels file and sidecar, whose answers are known without running our
  code: the tiny extractor's first three features are the mean R, G and B, and the head maps them
  to red / green / blue.
- `retrained_graph`: the real `retrain` pipeline's export (tiny extractor, generated colour folders).
- `solid_images`: one solid-colour JPEG per RGB label.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

RGB_LABELS = ("red", "green", "blue")
SOLID_COLOURS = {"red": (220, 30, 40), "green": (20, 200, 50), "blue": (30, 40, 210)}


def write_frozen_graph(
    graph_path: Path, extractor, head_weights: np.ndarray, labels: tuple[str, ...]
) -> Path:
    """Freeze `softmax(extractor(Placeholder) @ head_weights)` to `graph_path` per the export contract.

    Args:
        graph_path: where the GraphDef goes; `<graph_path>.meta.json` and `output_labels.txt` go
            beside it.
        extractor: a FeatureExtractor; its spec gives the input size.
        head_weights: float32 [D, C].
        labels: C class names.
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    height, width = extractor.spec.input_size
    head = tf.Variable(head_weights.astype(np.float32), name="final_weights")

    signature = [tf.TensorSpec([None, height, width, 3], tf.float32, name="Placeholder")]

    @tf.function(input_signature=signature)
    def serve(images):
        return tf.nn.softmax(tf.matmul(extractor(images), head), name="final_result")

    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    graph_path.write_bytes(frozen.graph.as_graph_def().SerializeToString())
    (graph_path.parent / "output_labels.txt").write_text("".join(f"{label}\n" for label in labels))
    meta = {
        "format": "retrainer-graph/1",
        "input_layer": "Placeholder",
        "output_layer": "final_result",
        "input_height": height,
        "input_width": width,
        "input_mean": 0.0,
        "input_std": 255.0,
        "labels": list(labels),
        "extractor": {"name": extractor.spec.name, "id": extractor.spec.id},
    }
    Path(f"{graph_path}.meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return graph_path


def rgb_head_weights(vector_size: int) -> np.ndarray:
    """float32 [D, 3]: class c's logit is 5 x (mean of channel c - half the sum of the other two)."""
    weights = np.zeros((vector_size, 3), np.float32)
    weights[:3, :3] = 5.0 * (1.5 * np.eye(3) - 0.5)
    return weights


def write_solid_images(folder: Path, size: tuple[int, int] = (48, 40)) -> dict[str, Path]:
    """One solid-colour JPEG per RGB label, named `<label>.jpg`; returns {label: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for label, colour in SOLID_COLOURS.items():
        paths[label] = folder / f"{label}.jpg"
        Image.new("RGB", size, colour).save(paths[label], quality=95)
    return paths


@pytest.fixture(scope="session")
def tiny_graph(tmp_path_factory) -> Path:
    """A red/green/blue classifier frozen per the export contract, with sidecar and labels file."""
    from tests.fixtures_extractors import TinyExtractor

    extractor = TinyExtractor()
    folder = tmp_path_factory.mktemp("tiny_graph")
    return write_frozen_graph(
        folder / "output_graph.pb", extractor, rgb_head_weights(extractor.spec.vector_size), RGB_LABELS
    )


@pytest.fixture(scope="session")
def solid_images(tmp_path_factory) -> dict[str, Path]:
    return write_solid_images(tmp_path_factory.mktemp("solid_images"))


def retrain(image_dir: Path, out: Path, extractor: str, steps: int) -> Path:
    """Run the real retrain pipeline; returns the exported graph (labels and sidecar beside it)."""
    from retrainer.config import RetrainConfig
    from retrainer.pipeline import run

    config = RetrainConfig(
        image_dir=image_dir,
        output_graph=out / "output_graph.pb",
        output_labels=out / "output_labels.txt",
        summaries_dir=out / "retrain_logs",
        bottleneck_dir=out / "bottlenecks",
        intermediate_output_graphs_dir=out / "intermediate_graphs",
        checkpoint_path=out / "checkpoint" / "retrain_checkpoint",
        metrics_file=out / "metrics.json",
        report_html=out / "report.html",
        audit_file=out / "audit.json",
        tfhub_module=extractor,
        how_many_training_steps=steps,
        show_progress=False,
    )
    return run(config).outputs["output_graph"]


@pytest.fixture(scope="session")
def retrained_graph(tmp_path_factory) -> Path:
    """`retrain --tfhub_module tiny_test` on red/green/blue class folders (10 generated PNGs each)."""
    from tests.fixtures_data import make_color_image_dir

    root = tmp_path_factory.mktemp("retrained")
    image_dir = make_color_image_dir(root / "colors", per_class=10)
    return retrain(image_dir, root / "retrain_output", "tiny_test", steps=100)
