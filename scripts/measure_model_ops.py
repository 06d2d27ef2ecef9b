"""Measure which TensorFlow ops the models retrainer writes and reads contain (for the allowlist).

Builds, in a temporary folder, with retrainer's own exporters: the frozen graph and SavedModel of
every built-in extractor and `keras:` backbone (random weights: the same graph as ImageNet
weights), and the TF2 / TF1 Hub-format module styles the tests build. For each it prints the ops
that loading and running it would use (`retrainer.security.model_ops`, the walk `check_model`
does) and the ones the allowlist lacks; `--markdown` prints the table of docs/security.md.

    python scripts/measure_model_ops.py                 # everything (about 20 min on 2 cores)
    python scripts/measure_model_ops.py --quick         # Lite0 + one backbone + the test modules
    python scripts/measure_model_ops.py --keras MobileNetV2,ResNet50
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BUILT_INS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
QUICK_KERAS = ("MobileNetV2",)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Lite0, MobileNetV2, test modules")
    parser.add_argument("--keras", default=None,
                        help="comma-separated keras application names (default: all)")
    parser.add_argument("--markdown", action="store_true", help="print the docs table")
    args = parser.parse_args()

    from retrainer.extractors.keras_apps import APPLICATIONS
    from retrainer.security.allowlist import ALLOWED_OPS, RESTORE_OPS

    # The checker allows a restore op where it reads the model's own variables (TF1 modules).
    accepted = ALLOWED_OPS | RESTORE_OPS

    built_ins = BUILT_INS[:1] if args.quick else BUILT_INS
    keras = (args.keras.split(",") if args.keras else
             QUICK_KERAS if args.quick else sorted(APPLICATIONS))
    rows = []
    union: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="measure-ops-") as scratch:
        for name, build in _models(Path(scratch), built_ins, keras):
            started = time.perf_counter()
            measured = build()
            for kind, ops in measured.items():
                union |= ops
                missing = sorted(ops - accepted)
                rows.append((name, kind, len(ops), missing))
                print(f"{name:34s} {kind:16s} {len(ops):3d} ops  "
                      f"{'OK' if not missing else 'NOT ALLOWED: ' + ', '.join(missing)}  "
                      f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    print(f"\n{len(union)} distinct ops in {len(rows)} models; allowlist: {len(ALLOWED_OPS)}; "
          f"measured but not allowed: {sorted(union - accepted) or 'none'}", file=sys.stderr)
    print(f"ALL_OPS = {sorted(union)}")
    if args.markdown:
        print("\n| model | file | ops |\n| --- | --- | ---: |")
        for name, kind, count, _ in rows:
            print(f"| {name} | {kind} | {count} |")
    return 1 if union - accepted else 0


def _models(scratch: Path, built_ins, keras) -> Iterator[tuple[str, Callable[[], dict]]]:
    for name in built_ins:
        yield name, lambda name=name: _exports(scratch, name, tflite=True)
    yield (f"{built_ins[0]} multi-label + novelty",
           lambda: _exports(scratch, built_ins[0], tflite=True, multi_label_novelty=True))
    for application in keras:
        handle = f"keras:{application},weights=random"
        yield f"keras:{application}", lambda handle=handle: _exports(scratch, handle)
    yield "test modules (TF2, TF1 Hub)", lambda: _test_modules(scratch)
    for application in ("MobileNetV2", "EfficientNetB0", "ResNet50", "InceptionV3"):
        yield f"tf_keras {application} module", lambda name=application: _tf_keras_module(
            scratch, name)


def _exports(scratch: Path, handle: str, tflite: bool = False,
             multi_label_novelty: bool = False) -> dict[str, set[str]]:
    """Frozen graph + SavedModel (+ float and int8 .tflite) of `handle`, a fresh 3-class head;
    `multi_label_novelty`: a sigmoid head with thresholds and the novelty output, as a
    multi-label run exports (+ float and int8 .onnx, checked)."""
    import numpy as np

    from retrainer.errors import UntrustedModelError
    from retrainer.exports.classifier import Classifier
    from retrainer.exports.graph import GraphExporter
    from retrainer.exports.saved_model import write_saved_model
    from retrainer.extractors import create_extractor
    from retrainer.security import check_model, model_ops
    from retrainer.training.head_layer import initial_head
    from retrainer.training.novelty import fit_novelty
    from retrainer.training.objectives import SIGMOID, SOFTMAX

    extractor = create_extractor(handle)
    size = extractor.spec.vector_size
    head = initial_head(size, 3, seed=0, objective=SIGMOID if multi_label_novelty else SOFTMAX)
    novelty, thresholds = None, None
    if multi_label_novelty:
        vectors = np.random.default_rng(0).random((96, size), np.float32)
        novelty = fit_novelty(vectors[:64], np.arange(64) % 3, vectors[64:])
        thresholds = [0.5, 0.4, 0.6]
    classifier = Classifier(extractor, head, ("a", "b", "c"), "final_result", novelty, thresholds)
    folder = scratch / (handle.replace(":", "_").replace(",", "_").replace("=", "_")
                        + ("_multi_label_novelty" if multi_label_novelty else ""))
    folder.mkdir()
    graph, saved_model = folder / "output_graph.pb", folder / "saved_model"
    GraphExporter(classifier).write_graph(graph)
    write_saved_model(classifier, saved_model)
    measured = {"frozen graph": set(model_ops(graph)), "SavedModel": set(model_ops(saved_model))}
    if tflite:
        from retrainer.exports.quantization import QuantizationConfig
        from retrainer.exports.tflite import convert

        height, width = extractor.spec.input_size
        calibration = np.random.default_rng(0).integers(0, 256, (10, height, width, 3), np.uint8)
        for mode in (QuantizationConfig("none"), QuantizationConfig("int8", 10)):
            path = folder / f"model_{mode.mode}.tflite"
            path.write_bytes(convert(classifier, mode, calibration))
            try:
                check_model(path)  # custom ops, delegates, oversized tensors
                measured[f".tflite {mode.mode}"] = set()
            except UntrustedModelError as error:
                measured[f".tflite {mode.mode}"] = {f"REFUSED: {error}"}
    if multi_label_novelty:
        from retrainer.exports.onnx import convert as onnx_model
        from retrainer.exports.onnx import quantize_int8

        data = onnx_model(classifier).SerializeToString()
        for mode, model in (("none", data), ("int8", quantize_int8(data, calibration))):
            path = folder / f"model_{mode}.onnx"
            path.write_bytes(model)
            try:
                check_model(path)  # standard ONNX ops only
                measured[f".onnx {mode}"] = set()
            except UntrustedModelError as error:
                measured[f".onnx {mode}"] = {f"REFUSED: {error}"}
    return measured


def _tf_keras_module(scratch: Path, name: str) -> dict[str, set[str]]:
    """A TF2 module the way TF Hub's TF2 image modules were made: a Keras 2 (tf_keras) backbone
    with dropout, saved with tf.saved_model.save (its __call__ traced for training too)."""
    import tensorflow as tf
    import tf_keras

    from retrainer.security import model_ops

    size = 75 if name == "InceptionV3" else 96
    backbone = getattr(tf_keras.applications, name)(weights=None, include_top=False,
                                                     pooling="avg", input_shape=(size, size, 3))
    model = tf_keras.Model(backbone.input, tf_keras.layers.Dropout(0.2)(backbone.output))
    folder = scratch / f"tf_keras_{name}"
    tf.saved_model.save(model, str(folder))
    return {"TF2 module (tf_keras)": set(model_ops(folder))}


def _test_modules(scratch: Path) -> dict[str, set[str]]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from retrainer.security import model_ops
    from tests.fixtures_faults import save_slow_module
    from tests.fixtures_hub import module_kernel, save_tf1_hub_module, save_tf2_module
    from tests.fixtures_security import save_tf1_slim_style_module

    measured: dict[str, set[str]] = {}
    for style in ("call", "call_training", "signature", "feature_map", "not_image"):
        path = save_tf2_module(scratch / f"tf2_{style}", module_kernel(), style=style)
        measured.setdefault("TF2 modules", set()).update(model_ops(path))
    measured["TF2 slow module (tests/fixtures_faults)"] = set(
        model_ops(save_slow_module(scratch / "slow")))
    tf1 = save_tf1_hub_module(scratch / "tf1", module_kernel())
    measured["TF1 Hub module"] = set(model_ops(tf1))
    measured["TF1 Hub module, TF-Slim style"] = set(
        model_ops(save_tf1_slim_style_module(scratch / "tf1_slim")))
    return measured


if __name__ == "__main__":
    sys.exit(main())
