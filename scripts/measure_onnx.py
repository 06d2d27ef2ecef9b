"""Measure the ONNX export: which opset, and whether the int8 variant is worth it.

From a finished retrain (its checkpointed head, its frozen graph, its test split), the classifier is
converted at each opset tf2onnx 1.17 writes and quantized to int8 (ONNX Runtime static
quantization on the run's calibration sample); each model runs through ONNX Runtime on the whole
test split. Printed per model: conversion seconds, size, the ops used, top-1 agreement with the
frozen graph and the largest probability difference, and latency (batch 1 and batch 32, median
of rounds) as a ratio to the opset-13 float model measured in the same run.

    PYTHONPATH=. python scripts/measure_onnx.py --run runs/fashion_mnist [--opsets 11,13,15,17,18]
    PYTHONPATH=. python scripts/measure_onnx.py --smoke     # seconds: checks the script works
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROUNDS_ONE, ROUNDS_BATCH, BATCH = 30, 5, 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a retrain's output folder (output_graph.pb, "
                        "metrics.json with the flags, its checkpoint)")
    parser.add_argument("--opsets", default="11,12,13,15,17,18")
    parser.add_argument("--smoke", action="store_true",
                        help="EfficientNet-Lite0 at 64x64 with an untrained head, 8 images")
    args = parser.parse_args()
    classifier, pixels, reference, calibration = (_smoke() if args.smoke else _from_run(args.run))
    opsets = [13] if args.smoke else [int(value) for value in args.opsets.split(",")]
    rows = []
    from retrainer.exports.onnx import convert, quantize_int8

    with tempfile.TemporaryDirectory() as scratch:
        for opset in opsets:
            started = time.perf_counter()
            data = convert(classifier, opset).SerializeToString()
            rows.append(_measure(f"opset {opset}", data, time.perf_counter() - started, pixels,
                                 reference, Path(scratch)))
            if opset == 13:
                started = time.perf_counter()
                quantized = quantize_int8(data, calibration)
                rows.append(_measure("opset 13 int8", quantized,
                                     time.perf_counter() - started, pixels, reference,
                                     Path(scratch)))
    base = next(row for row in rows if row["model"] == "opset 13")
    for row in rows:
        row["batch1_ratio"] = round(row["batch1_ms"] / base["batch1_ms"], 2)
        row["batch32_ratio"] = round(row["batch32_ms"] / base["batch32_ms"], 2)
    print(json.dumps(rows, indent=2))


def _measure(name: str, data: bytes, seconds: float, pixels: np.ndarray, reference: np.ndarray,
             scratch: Path) -> dict:
    import onnx
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    images = pixels.astype(np.float32) / 255.0
    probabilities = np.concatenate([
        session.run(["probabilities"], {"images": images[start:start + BATCH]})[0]
        for start in range(0, len(images), BATCH)])
    one = _median_ms(lambda: session.run(None, {"images": images[:1]}), ROUNDS_ONE)
    batch = _median_ms(lambda: session.run(None, {"images": images[:BATCH]}), ROUNDS_BATCH)
    return {
        "model": name, "convert_s": round(seconds, 1), "bytes": len(data),
        "ops": sorted({node.op_type for node in onnx.load_from_string(data).graph.node}),
        "agreement": round(float((probabilities.argmax(1) == reference.argmax(1)).mean()), 4),
        "max_dp": round(float(np.abs(probabilities - reference).max()), 6),
        "batch1_ms": round(one, 2), "batch32_ms": round(batch, 1),
    }


def _median_ms(call, rounds: int) -> float:
    call()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _from_run(run: Path):
    import tensorflow as tf

    from retrainer.classify.config import ClassifyConfig
    from retrainer.classify.run import open_model
    from retrainer.data.batches import decode_files
    from retrainer.data.discovery import discover_images
    from retrainer.exports.classifier import Classifier
    from retrainer.exports.tflite import seeded_sample
    from retrainer.extractors import create_extractor
    from retrainer.training.head_layer import HeadLayer, initial_head

    flags = json.loads((run / "metrics.json").read_text())["flags"]
    collection = discover_images(Path(flags["image_dir"]), flags["validation_percentage"],
                                 flags["testing_percentage"])
    extractor = create_extractor(flags["tfhub_module"], flags["image_size"])
    layer = HeadLayer(initial_head(extractor.spec.vector_size, len(collection.labels), seed=0))
    tf.train.Checkpoint(head=layer).read(flags["checkpoint_path"]).expect_partial()
    classifier = Classifier(extractor, layer.head(), collection.labels,
                            flags["final_tensor_name"])
    tests = collection.in_split("testing")
    pixels, ok = decode_files([image.path for image in tests], extractor.spec.input_size)
    model = open_model(ClassifyConfig(graph=Path(flags["output_graph"])))
    reference = model.outputs(pixels[ok])[0]
    training = collection.in_split("training")
    chosen = seeded_sample(flags["tflite_calibration_images"], len(training), flags["seed"])
    calibration, fine = decode_files([training[index].path for index in chosen],
                                     extractor.spec.input_size)
    return classifier, pixels[ok], reference, calibration[fine]


def _smoke():
    from retrainer.exports.classifier import Classifier
    from retrainer.extractors import create_extractor
    from retrainer.training.head_layer import initial_head

    extractor = create_extractor("efficientnet_lite0", 64)
    classifier = Classifier(extractor, initial_head(1280, 3, seed=0), ("a", "b", "c"), "out")
    pixels = np.random.default_rng(0).integers(0, 256, (12, 64, 64, 3), dtype=np.uint8)
    reference = classifier.classify(pixels.astype(np.float32) / 255.0).numpy()
    return classifier, pixels, reference, pixels


if __name__ == "__main__":
    main()
