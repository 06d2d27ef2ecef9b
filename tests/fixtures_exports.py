"""Deployable exports for the TFLite / SavedModel / export-report tests (owned by the export stage).

- `deployed_run`: one real `retrain` (tiny_test extractor, red/green/blue folders) that writes the
  frozen graph, all four .tflite modes, the SavedModel and both .onnx modes (every one with the
  `novelty` output), with its RetrainResult.
- `bytes_literal(data)`: `data` as a Python bytes literal of \\xNN escapes only (for
  `saved_model_cli --input_exprs`, which splits its argument on ';' and '=').
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

DEPLOY_CLASSES = ("red", "green", "blue")


@dataclasses.dataclass(frozen=True)
class DeployedRun:
    out: Path
    image_dir: Path
    result: object  # RetrainResult
    graph: Path
    tflite: dict  # {mode: Path}
    saved_model: Path
    onnx: dict  # {mode: Path}


def bytes_literal(data: bytes) -> str:
    return "b'" + "".join(f"\\x{byte:02x}" for byte in data) + "'"


@pytest.fixture(scope="session")
def deployed_run(tmp_path_factory) -> DeployedRun:
    from retrainer.config import RetrainConfig
    from retrainer.exports.quantization import MODES, ONNX_MODES, onnx_paths, tflite_paths
    from retrainer.pipeline import run
    from tests.fixtures_data import make_color_image_dir

    root = tmp_path_factory.mktemp("deployed")
    image_dir = make_color_image_dir(root / "colors", per_class=20)
    out = root / "out"
    config = RetrainConfig(
        image_dir=image_dir, output_graph=out / "output_graph.pb",
        output_labels=out / "output_labels.txt", summaries_dir=out / "logs",
        bottleneck_dir=root / "bottlenecks", checkpoint_path=out / "checkpoint" / "head",
        audit_file=out / "audit.json", metrics_file=out / "metrics.json",
        report_html=out / "report.html",
        tfhub_module="tiny_test", how_many_training_steps=100, show_progress=False,
        saved_model_dir=out / "saved_model", tflite_output_file=out / "model.tflite",
        tflite_quantization=MODES, tflite_calibration_images=20,
        onnx_output_file=out / "model.onnx", onnx_quantization=ONNX_MODES,
    )
    result = run(config)
    return DeployedRun(out, image_dir, result, config.output_graph,
                       tflite_paths(config.tflite_output_file, MODES), config.saved_model_dir,
                       onnx_paths(config.onnx_output_file, ONNX_MODES))
