"""Extractor precisions (retrainer/engines): stable vectors, separate caches, data-independent int8
calibration, the bfloat16 rewrite scoped to its engine, a working int8-trained classifier, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from retrainer import config as retrain_config
from retrainer.cache.bottlenecks import compute_bottlenecks
from retrainer.classify.config import ClassifyConfig
from retrainer.classify.run import classify_images
from retrainer.cli.retrain import main
from retrainer.data.decoding import load_image
from retrainer.data.discovery import normalize_label
from retrainer.engines import cpu
from retrainer.engines.cpu import cpu_precisions, runs_bfloat16
from retrainer.engines.factory import create_engine
from retrainer.engines.float32 import feature_function
from retrainer.errors import UsageError
from retrainer.extractors import (
    ExtractorSpec,
    FeatureExtractor,
    create_extractor,
    list_extractors,
    register_extractor,
)
from tests.fixtures_data import fashion_mnist_idx_dir, fashion_mnist_module
from tests.fixtures_extractors import TinyExtractor
from tests.fixtures_pipeline import retrain_args

# The precisions this CPU runs (TensorFlow has no bfloat16 rewrite on x86 without AVX-512).
RUNNABLE = cpu_precisions()

NOT_INT8 = "no_int8_test"


class CumprodExtractor(FeatureExtractor):
    """A real TF extractor whose op (cumulative product) TFLite has no int8 kernel for."""

    def __init__(self) -> None:
        super().__init__(name=NOT_INT8)
        self.spec = ExtractorSpec(name=NOT_INT8, id="no_int8_test-v1", input_size=(16, 16),
                                  vector_size=3)

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(tf.math.cumprod(images + 0.5, axis=1), axis=[1, 2])


if NOT_INT8 not in list_extractors():
    register_extractor(NOT_INT8)(lambda image_size=None: CumprodExtractor())


@pytest.fixture(scope="module", autouse=True)
def engine_cache(tmp_path_factory):
    """Converted int8 models go to a temporary cache, not the user's."""
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("xdg")
        patch.setenv("XDG_CACHE_HOME", str(home))
        yield home / "retrainer" / "engines"


@pytest.fixture(scope="module")
def lite0():
    return create_extractor("efficientnet_lite0")


@pytest.fixture(scope="module")
def lite0_int8(lite0):
    return create_engine(lite0, "int8")


def _pixels(paths, size=(224, 224)) -> np.ndarray:
    return np.stack([load_image(path, size) for path in paths])


def test_unknown_precision_is_a_usage_error():
    with pytest.raises(UsageError, match="--extractor_precision must be one of"):
        retrain_config.RetrainConfig(image_dir=Path("x"), extractor_precision="float16")


def test_each_precision_is_stable_run_to_run_and_close_to_float32(lite0, lite0_int8,
                                                                  fashion_mnist_holdout_dir):
    pixels = _pixels(sorted(fashion_mnist_holdout_dir.rglob("*.png"))[:8])
    reference = create_engine(lite0, "float32")(pixels)
    for precision in RUNNABLE:
        engine = lite0_int8 if precision == "int8" else create_engine(lite0, precision)
        first, second = engine(pixels), engine(pixels)
        np.testing.assert_array_equal(first, second)
        assert first.dtype == np.float32 and first.shape == (8, 1280)
        error = np.linalg.norm(first - reference) / np.linalg.norm(reference)
        assert error < 0.25, (precision, error)  # reduced precision, the same network
        if precision != "float32":
            assert error > 0, precision  # really computed differently


def test_a_kept_int8_model_runs_without_tensorflow(lite0_int8, fashion_mnist_dir, tmp_path):
    """The engine's converted model, kept by an earlier run, gives the same vectors in a process
    where TensorFlow cannot be imported (the int8 extraction can run while TensorFlow loads);
    a damaged or missing file gives None (the engine is then built and converts again)."""
    import subprocess
    import sys

    from retrainer.engines.int8 import Int8Engine

    pixels = _pixels(sorted(fashion_mnist_dir.rglob("*.png"))[:12])
    expected = lite0_int8(pixels)
    assert lite0_int8.model_path is not None and lite0_int8.model_path.is_file()
    np.save(tmp_path / "pixels.npy", pixels)
    script = (
        "import sys\n"
        "sys.modules['tensorflow'] = None  # any import of TensorFlow fails\n"
        "from pathlib import Path\n"
        "import numpy as np\n"
        "from types import SimpleNamespace\n"
        "from retrainer.engines.int8 import Int8Engine\n"
        "engine_id, path, folder = sys.argv[1:]\n"
        "spec = SimpleNamespace(id=engine_id, vector_size=1280)  # the kept record's fields\n"
        "engine = Int8Engine.from_kept_model(spec, Path(path), 2)\n"
        "np.save(Path(folder) / 'vectors.npy', engine(np.load(Path(folder) / 'pixels.npy')))\n"
        "assert engine.spec is spec and engine.model_path == Path(path)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, lite0_int8.spec.id,
                           str(lite0_int8.model_path), str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_array_equal(np.load(tmp_path / "vectors.npy"), expected)

    damaged = tmp_path / lite0_int8.model_path.name
    damaged.write_bytes(lite0_int8.model_path.read_bytes()[:-100])
    sidecar = lite0_int8.model_path.with_name(lite0_int8.model_path.name + ".sha256")
    damaged.with_name(damaged.name + ".sha256").write_bytes(sidecar.read_bytes())
    assert Int8Engine.from_kept_model(lite0_int8.spec, damaged, 2) is None
    assert Int8Engine.from_kept_model(lite0_int8.spec, tmp_path / "gone.tflite", 2) is None


def test_int8_interpreters_per_cpu_give_one_interpreters_vectors_in_order(
        lite0_int8, fashion_mnist_dir, tmp_path, caplog):
    """One single-thread interpreter per CPU, each batch run by whichever is free: the same
    vectors, in the files' order, as one interpreter; a bad image among good ones is still
    warned about and skipped; a single call split among the interpreters agrees too."""
    import shutil

    from retrainer.engines.int8 import Int8Engine

    paths = sorted(fashion_mnist_dir.rglob("*.png"))[:45]
    bad = tmp_path / "images" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(paths[0].read_bytes()[:60])  # a truncated PNG
    paths.insert(17, bad)
    assert lite0_int8.model_path is not None
    results = {}
    for threads in (1, 2, 3):
        engine = Int8Engine.from_kept_model(lite0_int8.spec, lite0_int8.model_path, threads)
        assert engine is not None
        cache = tmp_path / f"cache{threads}"
        caplog.clear()
        results[threads] = compute_bottlenecks(paths, engine, cache, batch_size=6,
                                               show_progress=False)
        assert [index for index, _ in results[threads].skipped] == [17]
        assert f"Skipping {bad}" in caplog.text
        shutil.rmtree(cache)
        rows = np.stack([load_image(path, (224, 224)) for path in paths[:13]])
        np.testing.assert_array_equal(engine(rows), lite0_int8(rows))  # 13 rows, split
    for threads in (2, 3):
        np.testing.assert_array_equal(results[threads].vectors, results[1].vectors)
        np.testing.assert_array_equal(results[threads].ok, results[1].ok)
    np.testing.assert_array_equal(results[1].vectors[18], lite0_int8(
        load_image(paths[18], (224, 224))[np.newaxis])[0])


def test_int8_calibration_is_data_independent(lite0, lite0_int8, fashion_mnist_dir,
                                              fashion_mnist_holdout_dir, tmp_path):
    """A fresh engine, used on another dataset, gives the same vectors for the shared image."""
    shared = sorted(fashion_mnist_holdout_dir.rglob("*.png"))[0]
    one = compute_bottlenecks([shared, *sorted(fashion_mnist_holdout_dir.rglob("*.png"))[1:]],
                              lite0_int8, tmp_path / "a", show_progress=False)
    other = create_engine(lite0, "int8")
    assert other.spec.id == lite0_int8.spec.id
    two = compute_bottlenecks([*sorted(fashion_mnist_dir.rglob("*.png"))[:9], shared], other,
                              tmp_path / "b", show_progress=False)
    np.testing.assert_array_equal(one.vectors[0], two.vectors[-1])


def test_precisions_have_separate_cache_namespaces(color_image_dir, tmp_path):
    paths = sorted(color_image_dir.rglob("*.png"))
    extractor = TinyExtractor()
    directories = set()
    for precision in RUNNABLE:
        engine = create_engine(extractor, precision)
        result = compute_bottlenecks(paths, engine, tmp_path, show_progress=False)
        assert result.computed == len(paths)  # nothing reused from another precision's cache
        directories.add(next(tmp_path.glob(f"{engine.spec.id}/*")))
    assert len(directories) == len(RUNNABLE)
    assert compute_bottlenecks(paths, extractor, tmp_path, show_progress=False).reused == len(paths)


@pytest.mark.skipif(not runs_bfloat16(), reason="TensorFlow skips the bfloat16 rewrite here")
def test_bfloat16_rewrite_does_not_leak_into_other_functions(color_image_dir):
    pixels = _pixels(sorted(color_image_dir.rglob("*.png")), (32, 32))
    extractor = TinyExtractor()
    float32 = feature_function(extractor)
    before = float32(pixels).numpy()
    bfloat16 = create_engine(extractor, "bfloat16")(pixels)
    assert not np.array_equal(bfloat16, before)
    np.testing.assert_array_equal(float32(pixels).numpy(), before)
    np.testing.assert_array_equal(feature_function(extractor)(pixels).numpy(), before)


def test_bfloat16_without_avx512_exits_2_naming_the_alternatives(color_image_dir, tmp_path,
                                                                  monkeypatch):
    """Where TensorFlow would skip the rewrite (x86 without AVX-512), bfloat16 is refused
    rather than computing float32 vectors under a bfloat16 cache namespace."""
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"sse4_2", "avx", "avx2", "fma"}))
    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
    assert not cpu.runs_bfloat16() and cpu.runs_bfloat16(frozenset({"avx512f"}), "x86_64")
    result = CliRunner().invoke(main, [*retrain_args(tmp_path, color_image_dir),
                                       "--extractor_precision", "bfloat16"])
    assert result.exit_code == 2
    assert "--extractor_precision bfloat16 needs a CPU with AVX-512" in result.stderr
    assert "auto, int8 or float32" in result.stderr and "Traceback" not in result.output


@pytest.fixture(scope="module")
def int8_trained(fashion_mnist_dir, tmp_path_factory, engine_cache):
    """A `retrain` on int8-engine vectors of real images, exporting the int8 .tflite too:
    (its --json document, its output folder, 100 held-out Fashion-MNIST images)."""
    tmp_path = tmp_path_factory.mktemp("int8_trained")
    args = retrain_args(tmp_path, fashion_mnist_dir, "--extractor_precision", "int8", "--json",
                        "--testing_percentage", "0", "--tflite_output_file",
                        str(tmp_path / "out" / "model.tflite"), "--tflite_quantization", "int8",
                        "--tflite_calibration_images", "100", extractor="efficientnet_lite0",
                        steps=300)
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    holdout = fashion_mnist_module().write_image_folder(
        fashion_mnist_idx_dir(), tmp_path / "holdout", per_class=10, subset="t10k")
    return json.loads(result.stdout), tmp_path / "out", sorted(holdout.rglob("*.png"))


def _top_labels(model: Path, labels: Path, paths: list[Path]) -> list[str]:
    config = ClassifyConfig(graph=model, labels=labels, top_k=1)
    return [result.predictions[0].label for result in classify_images(config, paths)]


def test_classifier_trained_on_int8_vectors_classifies_real_images(int8_trained):
    """The head learns from int8 vectors; the exported float32 graph labels held-out images."""
    document, out, holdout = int8_trained
    assert document["extractor_precision"] == "int8"
    assert "-int8-" in document["extractor_id"]
    predicted = _top_labels(out / "graph.pb", out / "labels.txt", holdout)
    correct = sum(label == normalize_label(path.parent.name)
                  for path, label in zip(holdout, predicted))
    assert correct >= 0.6 * len(holdout), f"{correct}/{len(holdout)}"  # chance: 10 %


def test_int8_tflite_export_of_an_int8_trained_head_agrees_with_the_frozen_graph(int8_trained):
    """Both quantizations stacked (head trained on int8-engine vectors, network exported to a
    full-integer .tflite calibrated on the training images) still label as the frozen graph does.

    Measured on 100 held-out images: 95 agree; accuracy 80 % (graph) vs 83 % (.tflite). The
    thresholds (90 agree, 8 points) leave margin for other CPUs and TensorFlow versions.
    """
    _, out, holdout = int8_trained
    truth = [normalize_label(path.parent.name) for path in holdout]
    graph = _top_labels(out / "graph.pb", out / "labels.txt", holdout)
    tflite = _top_labels(out / "model.tflite", out / "labels.txt", holdout)
    agree = sum(a == b for a, b in zip(graph, tflite))
    assert agree >= 0.9 * len(holdout), f"{agree}/{len(holdout)} agree"
    graph_correct = sum(label == true for label, true in zip(graph, truth))
    tflite_correct = sum(label == true for label, true in zip(tflite, truth))
    assert abs(graph_correct - tflite_correct) <= 0.08 * len(holdout), (graph_correct,
                                                                        tflite_correct)


def test_int8_for_an_unconvertible_extractor_exits_2(color_image_dir, tmp_path):
    args = retrain_args(tmp_path, color_image_dir, "--extractor_precision", "int8",
                        extractor=NOT_INT8)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    message = result.stderr.strip().splitlines()[-1]
    assert "--extractor_precision int8 is not available for extractor 'no_int8_test'" in message
    assert "Use --extractor_precision float32 or bfloat16" in message
    assert "Traceback" not in result.output


def test_default_precision_follows_the_cpu():
    from retrainer.engines.cpu import default_precision, fast_precisions

    assert fast_precisions(frozenset({"avx2", "avx512_vnni"}), "x86_64") == ("int8", "float32")
    assert fast_precisions(frozenset({"avx512_bf16", "avx2"}), "x86_64") == (
        "int8", "bfloat16", "float32")
    assert fast_precisions(frozenset({"sse4_2"}), "x86_64") == ("float32",)
    assert fast_precisions(frozenset(), "aarch64")[0] == "int8"
    assert retrain_config.RetrainConfig(image_dir=Path("x")).extractor_precision == "auto"
    assert default_precision(measured=False) == "float32"
    assert default_precision(measured=True) == ("int8" if "int8" in fast_precisions() else "float32")
    assert create_engine(TinyExtractor(), "auto").precision == "float32"  # int8 not measured


def test_int8_model_is_converted_once_and_a_corrupt_copy_is_rebuilt(engine_cache, color_image_dir,
                                                                    monkeypatch, caplog):
    from retrainer.engines import int8

    pixels = _pixels(sorted(color_image_dir.rglob("*.png")), (32, 32))
    extractor = TinyExtractor()
    first = create_engine(extractor, "int8")(pixels)
    (model,) = (engine_cache / create_engine(extractor, "int8").spec.id).glob("*.tflite")

    def no_conversion(_):
        raise AssertionError("converted again despite a cached model")

    with monkeypatch.context() as patch:
        patch.setattr(int8, "_converted", no_conversion)
        np.testing.assert_array_equal(create_engine(extractor, "int8")(pixels), first)
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # truncated
    with caplog.at_level("WARNING"):
        np.testing.assert_array_equal(create_engine(extractor, "int8")(pixels), first)
    assert any("corrupt or truncated" in message and str(model) in message
               for message in caplog.messages)
    with monkeypatch.context() as patch:
        patch.setattr(int8, "_converted", no_conversion)
        np.testing.assert_array_equal(create_engine(extractor, "int8")(pixels), first)


def test_int8_model_takes_raw_uint8_pixels_as_its_quantized_input(color_image_dir):
    """Input scale 1/255, zero point 0: raw pixels give exactly the vectors a float [0, 1] input
    quantized by the model's first op gives (the v1 model); the id names the model format."""
    from retrainer.engines import int8
    from retrainer.formats.tflite import full_integer_model, new_interpreter

    extractor = TinyExtractor()
    engine = create_engine(extractor, "int8")
    assert int8.MODEL_FORMAT in engine.spec.id
    height, width = extractor.spec.input_size
    pixels = _pixels(sorted(color_image_dir.rglob("*.png")), (height, width))
    vectors = engine(pixels)  # converts the model on first use
    model = int8.cached_model(int8._model_path(extractor), lambda: b"")
    scale, zero_point = int8.input_quantization(model)
    assert np.float32(scale) == np.float32(1 / 255) and zero_point == 0
    features = tf.function(extractor.__call__,
                           input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32)])
    calibration = [[int8._scaled(image[np.newaxis])]
                   for image in int8.calibration_images((height, width))]
    float_input = new_interpreter(full_integer_model(features.get_concrete_function(),
                                                     calibration))
    float_input.resize_tensor_input(0, pixels.shape)
    float_input.allocate_tensors()
    float_input.set_tensor(float_input.get_input_details()[0]["index"], int8._scaled(pixels))
    float_input.invoke()
    expected = float_input.get_tensor(float_input.get_output_details()[0]["index"])
    np.testing.assert_array_equal(vectors, expected)


def _ops(model: bytes) -> list[str]:
    from retrainer.formats.tflite import BatchInterpreter

    return [op["op_name"] for op in BatchInterpreter(model)._interpreter._get_ops_details()]


def _every_byte(height: int, width: int) -> np.ndarray:
    every_byte = np.resize(np.arange(256, dtype=np.uint8), (2, height, width, 3))
    return np.concatenate([every_byte, 255 - every_byte])


def test_int8_engine_runs_its_model_without_the_input_shift(color_image_dir):
    """The kept model's first op only shifts the uint8 pixels to int8 (q - 128); the engine runs
    the model without it (`int8_input_model`), fed the pixels with the top bit flipped: every
    byte value gives the kept model's own outputs. A model that starts otherwise (the v1 model's
    float input) is run as it is."""
    from retrainer.engines import int8
    from retrainer.formats.tflite import BatchInterpreter, full_integer_model, int8_input_model

    extractor = TinyExtractor()
    engine = create_engine(extractor, "int8")
    height, width = extractor.spec.input_size
    pixels = np.concatenate([_pixels(sorted(color_image_dir.rglob("*.png")), (height, width)),
                             _every_byte(height, width)])
    vectors = engine(pixels)  # converts and keeps the model
    model = int8.cached_model(int8._model_path(extractor), lambda: b"")
    signed = int8_input_model(model)
    assert signed is not None and len(signed) == len(model) and engine._signed
    kept, shifted = BatchInterpreter(model), BatchInterpreter(signed)
    assert (kept.input_dtype, shifted.input_dtype) == (np.uint8, np.int8)
    assert _ops(model)[0] == "QUANTIZE" and _ops(signed) == _ops(model)[1:]
    np.testing.assert_array_equal(shifted((pixels ^ np.uint8(0x80)).view(np.int8)), kept(pixels))
    np.testing.assert_array_equal(vectors, kept(pixels))

    features = tf.function(extractor.__call__,
                           input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32)])
    calibration = [[int8._scaled(image[np.newaxis])]
                   for image in int8.calibration_images((height, width))]
    assert int8_input_model(full_integer_model(features.get_concrete_function(),
                                               calibration)) is None


def test_efficientnet_lite_int8_runs_without_its_normalization(lite0_int8):
    """EfficientNet-Lite's int8 model subtracts 127/255 after the shift to int8, which only
    moves the zero point (-128 -> -1): both ops are left out, with the same outputs for every
    byte value. The same model with another constant (a shift that changes the values) keeps
    its subtraction."""
    from flatbuffers import number_types

    from retrainer.formats import flatbuffer_fields as fields
    from retrainer.formats.tflite import BatchInterpreter, int8_input_model

    pixels = _every_byte(224, 224)
    vectors = lite0_int8(pixels)  # loads the model
    assert lite0_int8.model_path is not None
    model = lite0_int8.model_path.read_bytes()
    flipped = (pixels ^ np.uint8(0x80)).view(np.int8)
    signed = int8_input_model(model)
    assert signed is not None
    assert _ops(model)[:2] == ["QUANTIZE", "SUB"] and _ops(signed) == _ops(model)[2:]
    np.testing.assert_array_equal(BatchInterpreter(signed)(flipped),
                                  BatchInterpreter(model)(pixels))
    np.testing.assert_array_equal(vectors, BatchInterpreter(model)(pixels))

    main = fields.tables(fields.root(model), 2)[0]
    constant = fields.tables(main, 3)[1]  # the SUB's second input: the constant
    tensor = fields.tables(main, 0)[fields.numbers(constant, 1, number_types.Int32Flags)[1]]
    buffer = fields.tables(fields.root(model), 4)[fields.scalar(tensor, 2,
                                                                number_types.Uint32Flags)]
    at = buffer.Vector(fields.position(buffer, 0))
    other = bytearray(model)
    other[at] = (other[at] - 1) % 256  # one step less subtracted: every value moves
    other_signed = int8_input_model(bytes(other))
    assert other_signed is not None and _ops(other_signed) == _ops(model)[1:]
    np.testing.assert_array_equal(BatchInterpreter(other_signed)(flipped),
                                  BatchInterpreter(bytes(other))(pixels))
