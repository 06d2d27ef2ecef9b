"""The SavedModel's `serving_bytes` signature, proved with TensorFlow's own `saved_model_cli`."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.fixtures_exports import bytes_literal

SAVED_MODEL_CLI = Path(sys.executable).parent / "saved_model_cli"
COLOURS = {"red": (230, 20, 30), "green": (20, 210, 40), "blue": (25, 30, 220)}


def encoded(colour: tuple[int, int, int], image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 16), colour).save(buffer, image_format)
    return buffer.getvalue()


def saved_model_cli(*args: str) -> str:
    result = subprocess.run([str(SAVED_MODEL_CLI), *args], capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_show_lists_the_bytes_signature(deployed_run):
    shown = saved_model_cli("show", "--dir", str(deployed_run.saved_model), "--all")
    bytes_part = shown.split("signature_def['serving_bytes']:")[1].split("signature_def[")[0]
    assert "inputs['image_bytes'] tensor_info:" in bytes_part
    assert "dtype: DT_STRING" in bytes_part and "shape: (-1)" in bytes_part
    for output in ("label", "probabilities", "score"):
        assert f"outputs['{output}'] tensor_info:" in bytes_part
    default_part = shown.split("signature_def['serving_default']:")[1].split("signature_def[")[0]
    assert "inputs['images']" in default_part and "shape: (-1, 32, 32, 3)" in default_part


def test_run_classifies_encoded_jpeg_png_gif_bmp(deployed_run):
    formats = ("JPEG", "PNG", "GIF", "BMP")
    images = [encoded(colour, image_format) for image_format in formats
              for colour in COLOURS.values()]
    expression = "image_bytes=[" + ",".join(bytes_literal(image) for image in images) + "]"
    printed = saved_model_cli("run", "--dir", str(deployed_run.saved_model), "--tag_set", "serve",
                              "--signature_def", "serving_bytes", "--input_exprs", expression)
    labels = printed.split("Result for output key label:")[1].split("Result for")[0]
    assert labels.replace("[", " ").replace("]", " ").split() == (
        ["b'red'", "b'green'", "b'blue'"] * len(formats))
