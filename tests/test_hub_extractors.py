"""Extractors from hub modules (local TF2/TF1 directories, remote handles) and `keras:` backbones."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from retrainer.errors import ModelError, UsageError
from retrainer.extractors import create_extractor, keras_apps, tfhub
from tests.fixtures_hub import (
    expected_features,
    module_kernel,
    save_tf1_hub_module,
    save_tf2_module,
    serve_module_archive,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL_KERAS = "keras:MobileNetV2,alpha=0.35"  # smallest MobileNetV2 with ImageNet weights
SMALL_KERAS_WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5"


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything opens a socket connection."""

    def refuse(self, address):
        raise AssertionError(f"unexpected network connection to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def random_images(count: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=(count, *size, 3)).astype(np.float32)


def freeze(extractor):
    """What export does: trace with a [None, H, W, 3] input and fold variables into constants.

    Returns:
        (GraphDef, input tensor name, output tensor name).
    """
    spec = tf.TensorSpec([None, *extractor.spec.input_size, 3], tf.float32)
    frozen = convert_variables_to_constants_v2(
        tf.function(extractor.__call__).get_concrete_function(spec)
    )
    return frozen.graph.as_graph_def(), frozen.inputs[0].name, frozen.outputs[0].name


def run_frozen(frozen, images: np.ndarray) -> np.ndarray:
    graph_def, input_name, output_name = frozen
    function = tf.compat.v1.wrap_function(
        lambda: tf.graph_util.import_graph_def(graph_def, name=""), []
    ).prune(input_name, output_name)
    return function(tf.constant(images)).numpy()


# --- Local modules -------------------------------------------------------------------------------

MODULE_KINDS = {
    # kind: (writer, module's own size or None for "any")
    "tf2_call": (lambda path, kernel: save_tf2_module(path, kernel, 32, "call"), 32),
    "tf2_call_training": (lambda path, kernel: save_tf2_module(path, kernel, 32, "call_training"), 32),
    "tf2_signature": (lambda path, kernel: save_tf2_module(path, kernel, 32, "signature"), 32),
    "tf2_any_size": (lambda path, kernel: save_tf2_module(path, kernel, None, "call"), None),
    "tf1_hub_format": (lambda path, kernel: save_tf1_hub_module(path, kernel, 32), 32),
}


@pytest.mark.parametrize("kind", sorted(MODULE_KINDS))
def test_local_module_computes_its_features_and_freezes(kind, tmp_path, no_network):
    write, own_size = MODULE_KINDS[kind]
    kernel = module_kernel(vector_size=8)
    module_dir = write(tmp_path / kind, kernel)

    extractor = create_extractor(str(module_dir), image_size=None if own_size else 40)

    size = (own_size or 40, own_size or 40)
    assert extractor.spec.input_size == size
    assert extractor.spec.vector_size == 8
    assert re.fullmatch(rf"hub-{kind}-[0-9a-f]{{16}}-{size[0]}x{size[1]}", extractor.spec.id)
    assert [v.shape.as_list() for v in extractor.variables] == [[1, 1, 3, 8]]
    images = random_images(3, size)
    want = expected_features(images, kernel)
    np.testing.assert_allclose(extractor(tf.constant(images)).numpy(), want, rtol=1e-5, atol=1e-6)
    frozen = freeze(extractor)
    assert not {"VarHandleOp", "ReadVariableOp", "VariableV2"} & {node.op for node in frozen[0].node}
    np.testing.assert_allclose(run_frozen(frozen, images), want, rtol=1e-5, atol=1e-6)


def test_any_size_module_defaults_to_224(tmp_path):
    module_dir = save_tf2_module(tmp_path / "any", module_kernel(), size=None)
    assert create_extractor(str(module_dir)).spec.input_size == (224, 224)


def test_fixed_size_module_rejects_other_image_size(tiny_hub_module):
    assert create_extractor(str(tiny_hub_module), image_size=32).spec.input_size == (32, 32)
    with pytest.raises(UsageError) as caught:
        create_extractor(str(tiny_hub_module), image_size=48)
    assert "takes 32x32 images; --image_size=48 conflicts" in str(caught.value)
    assert caught.value.exit_code == 2


def test_id_follows_module_content_not_path_or_mtime(tmp_path):
    module_dir = save_tf2_module(tmp_path / "module", module_kernel(seed=0))
    first = create_extractor(str(module_dir)).spec.id
    for path in module_dir.rglob("*"):
        os.utime(path, (1, 1))
    assert create_extractor(str(module_dir)).spec.id == first

    # Same graph, other weights: only variables/ differs.
    other = save_tf2_module(tmp_path / "other", module_kernel(seed=1))
    shutil.rmtree(module_dir / "variables")
    shutil.copytree(other / "variables", module_dir / "variables")
    replaced = create_extractor(str(module_dir))
    assert replaced.spec.id != first
    np.testing.assert_allclose(
        replaced(tf.constant(random_images(1, (32, 32)))).numpy(),
        expected_features(random_images(1, (32, 32)), module_kernel(seed=1)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_module_folder_on_a_remote_file_system(tmp_path, monkeypatch, no_network):
    """A module directory on ram:// (gs:// takes the same path) is copied into the module cache and
    gives the local module's id and vectors; a URL that is not a directory is exit 2."""
    from retrainer.io import storage

    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub_cache"))
    kernel = module_kernel(seed=3)
    local = save_tf2_module(tmp_path / "tiny_remote", kernel)
    url = "ram://test_module_folder/tiny_remote"
    storage.upload_tree(local, url)

    remote = create_extractor(url)
    local_id = create_extractor(str(local)).spec.id
    assert remote.spec.id.rsplit("-", 2)[1:] == local_id.rsplit("-", 2)[1:]  # same content and size
    images = random_images(2, (32, 32))
    np.testing.assert_allclose(remote(tf.constant(images)).numpy(), expected_features(images, kernel),
                               rtol=1e-5, atol=1e-6)
    assert create_extractor(url).spec.id == remote.spec.id  # copied again: same content folder
    assert len(list((tmp_path / "hub_cache" / "folders").iterdir())) == 1

    with pytest.raises(UsageError) as caught:
        create_extractor(f"{url}/saved_model.pb")
    assert caught.value.exit_code == 2 and "is not a directory" in str(caught.value)


@pytest.mark.parametrize(
    "style, message",
    [
        ("feature_map", "returns shape [1, 32, 32, 8]; expected a feature vector [N, D]"),
        ("not_image", "has no image feature-vector entry point"),
    ],
)
def test_module_without_feature_vector_is_a_model_error(style, message, tmp_path):
    module_dir = save_tf2_module(tmp_path / style, module_kernel(), style=style)
    with pytest.raises(ModelError, match=re.escape(message)) as caught:
        create_extractor(str(module_dir))
    assert caught.value.exit_code == 4


def test_directory_without_saved_model_is_a_usage_error(tmp_path):
    (tmp_path / "module.tar.gz").write_bytes(b"not a module")
    with pytest.raises(UsageError, match=r"is not a model directory: expected a TF2 SavedModel"):
        create_extractor(str(tmp_path))
    with pytest.raises(UsageError, match=r"is a file; expected a directory holding saved_model.pb"):
        create_extractor(str(tmp_path / "module.tar.gz"))


@pytest.mark.parametrize(
    "handle, message",
    [
        ("./no/such/module", "module directory './no/such/module' does not exist"),
        ("tfhub.dev/google/imagenet/x/5", "spell it as a URL: https://tfhub.dev/google/imagenet/x/5"),
    ],
)
def test_missing_module_directory(handle, message, no_network):
    with pytest.raises(UsageError, match=message.replace(".", r"\.")):
        create_extractor(handle)


def test_local_modules_need_neither_tensorflow_hub_nor_network(tiny_hub_module, tmp_path):
    """A fresh process: local dirs and built-ins never import tensorflow_hub or fill its cache."""
    hub_cache = tmp_path / "hub_cache"
    hub_cache.mkdir()
    script = (
        "import sys\n"
        "from retrainer.extractors import create_extractor\n"
        f"create_extractor({str(tiny_hub_module)!r})\n"
        "print('tensorflow_hub' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TFHUB_CACHE_DIR": str(hub_cache)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    assert list(hub_cache.iterdir()) == []


# --- Remote handles ------------------------------------------------------------------------------

def unused_local_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_remote_module_fails_fast_with_model_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub_cache"))
    handle = f"http://127.0.0.1:{unused_local_port()}/google/imagenet/mobilenet_v2/feature_vector/5"
    started = time.monotonic()
    with pytest.raises(ModelError) as caught:
        create_extractor(handle)
    assert time.monotonic() - started < 30
    message = str(caught.value)
    assert f"could not download TF Hub module {handle!r}" in message
    assert "--tfhub_module /path/to/module" in message
    assert [p for p in (tmp_path / "hub_cache").glob("*") if p.is_dir()] == []
    assert os.environ["TFHUB_CACHE_DIR"] == str(tmp_path / "hub_cache")
    assert socket.getdefaulttimeout() is None


def test_remote_module_is_downloaded_once_then_used_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("TFHUB_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    kernel = module_kernel(seed=3)
    module_dir = save_tf2_module(tmp_path / "published", kernel)

    with serve_module_archive(module_dir) as (base_url, requests):
        handle = f"{base_url}/google/tiny/feature_vector/1"
        downloaded = create_extractor(handle)
    assert requests == ["/google/tiny/feature_vector/1?tf-hub-format=compressed"]
    assert "TFHUB_CACHE_DIR" not in os.environ
    cache = tmp_path / "xdg" / "retrainer" / "tfhub_modules"
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1

    monkeypatch.setattr(socket.socket, "connect", lambda *_: pytest.fail("network used"))
    cached = create_extractor(handle)  # the server is gone: only the cache can answer
    assert cached.spec == downloaded.spec
    assert cached.spec.id.startswith("hub-google_tiny_feature_vector_1-")
    images = random_images(2, (32, 32))
    want = expected_features(images, kernel)
    np.testing.assert_allclose(cached(tf.constant(images)).numpy(), want, rtol=1e-5, atol=1e-6)


# --- keras: backbones ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(keras_apps.APPLICATIONS))
def test_every_listed_application_has_constructor_and_preprocessing(name):
    import importlib

    family, size = keras_apps.APPLICATIONS[name]
    applications = importlib.import_module("keras.applications")
    assert callable(getattr(applications, name))
    assert callable(getattr(applications, family).preprocess_input)
    assert 32 <= size <= 600


def test_keras_backbone_random_weights(no_network):
    extractor = create_extractor("keras:mobilenetv2,alpha=0.35,weights=random", image_size=96)

    assert extractor.spec.input_size == (96, 96)
    assert extractor.spec.vector_size == 1280
    assert re.fullmatch(r"keras-mobilenetv2_a0\.35-[0-9a-f]{16}-96", extractor.spec.id)
    assert len(extractor.variables) == len(extractor.model.weights) > 100
    images = random_images(2, (96, 96))
    # MobileNetV2 wants [-1, 1]; the extractor takes [0, 1].
    want = extractor.model(tf.constant(images * 2.0 - 1.0), training=False).numpy()
    np.testing.assert_allclose(extractor(tf.constant(images)).numpy(), want, rtol=1e-4, atol=1e-5)
    frozen = freeze(extractor)
    assert {node.op for node in frozen[0].node} >= {"Placeholder", "DepthwiseConv2dNative"}
    np.testing.assert_allclose(run_frozen(frozen, images), want, rtol=1e-4, atol=1e-5)
    # Random weights differ per build, so their vectors must never share a cache namespace.
    other = create_extractor("keras:MobileNetV2,alpha=0.35,weights=random", image_size=96)
    assert other.spec.id != extractor.spec.id


def test_keras_imagenet_weights_missing_offline(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    started = time.monotonic()
    with pytest.raises(ModelError) as caught:
        create_extractor(SMALL_KERAS, image_size=96)
    assert time.monotonic() - started < 30
    message = str(caught.value)
    expected_path = tmp_path / "keras_home" / "models" / SMALL_KERAS_WEIGHTS_FILE
    assert f"ImageNet weights {SMALL_KERAS_WEIGHTS_FILE} are not in the Keras cache" in message
    assert f"curl -L --create-dirs -o {expected_path} https://storage.googleapis.com/" in message
    assert caught.value.exit_code == 4
    from keras.src.utils import file_utils

    assert file_utils.get_file.__module__ == "keras.src.utils.file_utils"  # patch undone


def test_keras_weights_from_cache_and_from_file_agree(tmp_path, monkeypatch, no_network):
    import keras

    source = keras.applications.MobileNetV2(
        input_shape=(96, 96, 3), alpha=0.35, include_top=False, weights=None, pooling="avg"
    )
    weights_file = tmp_path / "my_weights.h5"
    source.save(weights_file)
    models_dir = tmp_path / "keras_home" / "models"
    models_dir.mkdir(parents=True)
    shutil.copy(weights_file, models_dir / SMALL_KERAS_WEIGHTS_FILE)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))

    from_cache = create_extractor(SMALL_KERAS, image_size=96)
    from_file = create_extractor(f"{SMALL_KERAS},weights={weights_file}", image_size=96)

    images = random_images(2, (96, 96))
    want = source(tf.constant(images * 2.0 - 1.0), training=False).numpy()
    for extractor in (from_cache, from_file):
        np.testing.assert_allclose(extractor(tf.constant(images)).numpy(), want, rtol=1e-4, atol=1e-5)
    assert from_cache.spec.id == from_file.spec.id  # same weights -> same cached vectors


def test_keras_corrupt_cached_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(ModelError, match=r"ImageNet weights (\S+) are not in") as missing:
        create_extractor("keras:MobileNetV3Small")
    cached = tmp_path / "models" / re.search(r"weights (\S+) are", str(missing.value)).group(1)
    cached.parent.mkdir()
    cached.write_bytes(b"truncated download")
    with pytest.raises(ModelError, match="are corrupt \\(hash mismatch\\): delete and re-fetch"):
        create_extractor("keras:MobileNetV3Small")


@pytest.mark.parametrize(
    "handle, image_size, error, message",
    [
        ("keras:MobileNetV9", None, UsageError,
         r"`keras:` name must be one of \['ConvNeXtBase', .*'MobileNetV2', .*\]\. Received: 'MobileNetV9'"),
        ("keras:VGG16,alpha=0.5", None, UsageError, "alpha only applies to MobileNet models"),
        ("keras:MobileNet,alpha=wide", None, UsageError, "alpha must be a number. Received: alpha='wide'"),
        ("keras:MobileNet,depth=3", None, UsageError, "options must be alpha=<float> or weights="),
        ("keras:MobileNet,weights=/no/such.h5", None, UsageError,
         "weights must be one of \\('imagenet', 'random'\\) or an existing weights file"),
        ("keras:InceptionV3,weights=random", 40, UsageError,
         "Keras cannot build 'keras:InceptionV3,weights=random' at 40x40: Input size must be at least 75x75"),
    ],
)
def test_keras_handle_errors(handle, image_size, error, message, no_network):
    with pytest.raises(error, match=message):
        create_extractor(handle, image_size=image_size)


def test_keras_weights_file_that_does_not_fit(tmp_path):
    bad = tmp_path / "notes.h5"
    bad.write_text("not hdf5")
    with pytest.raises(ModelError, match=f"cannot load weights file '{bad}' into MobileNetV2"):
        create_extractor(f"keras:MobileNetV2,alpha=0.35,weights={bad}", image_size=32)


def test_handles_are_classified_without_side_effects():
    assert tfhub.is_remote_handle("https://tfhub.dev/google/imagenet/inception_v3/feature_vector/5")
    assert tfhub.is_remote_handle("https://www.kaggle.com/models/google/mobilenet-v2/TensorFlow2/x/2")
    assert not tfhub.is_remote_handle("keras:MobileNetV2")
    assert not tfhub.is_remote_handle("/models/mobilenet")
    assert tfhub.looks_like_path("models/mobilenet") and tfhub.looks_like_path("~/m")
    assert not tfhub.looks_like_path("keras:MobileNetV2,weights=/w/x.h5")


# --- End to end: retrain -> frozen graph -> label-image ------------------------------------------

def retrain_args(image_dir: Path, out: Path, module: str, *extra: str) -> list[str]:
    return [
        "--image_dir", str(image_dir), "--tfhub_module", module,
        "--output_graph", str(out / "graph.pb"), "--output_labels", str(out / "labels.txt"),
        "--summaries_dir", str(out / "logs"), "--checkpoint_path", str(out / "checkpoint" / "ckpt"),
        "--bottleneck_dir", str(out / "bottlenecks"), "--how_many_training_steps", "30",
        "--metrics_file", str(out / "metrics.json"), "--report_html", str(out / "report.html"),
        "--audit_file", str(out / "audit.json"), "--json", "--quiet", *extra,
    ]


def check_exported_graph(graph_path: Path, input_size: tuple[int, int]) -> None:
    """retrain.py's contract: float32 Placeholder [?, H, W, 3] -> ... -> final_result, no variables."""
    graph_def = tf.compat.v1.GraphDef.FromString(graph_path.read_bytes())
    nodes = {node.name: node for node in graph_def.node}
    placeholder = nodes["Placeholder"]
    assert placeholder.op == "Placeholder"
    assert tf.dtypes.as_dtype(placeholder.attr["dtype"].type) == tf.float32
    assert [dim.size for dim in placeholder.attr["shape"].shape.dim] == [-1, *input_size, 3]
    assert "final_result" in nodes
    assert not [node.op for node in graph_def.node if "Variable" in node.op]


@pytest.mark.parametrize("kind", ["tf2_call", "tf1_hub_format"])
def test_retrain_and_label_image_with_local_module(kind, tmp_path, monkeypatch, no_network):
    from click.testing import CliRunner

    from retrainer.cli.label_image import main as label_image
    from retrainer.cli.retrain import main as retrain
    from retrainer.data.decoding import load_image
    from tests.fixtures_data import make_color_image_dir

    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub_cache"))
    images = make_color_image_dir(tmp_path / "colors", per_class=8)
    write, _ = MODULE_KINDS[kind]
    module_dir = write(tmp_path / kind, module_kernel(vector_size=16))
    out = tmp_path / "out"

    trained = CliRunner().invoke(
        retrain, retrain_args(images, out, str(module_dir), "--saved_model_dir", str(out / "saved"))
    )

    assert trained.exit_code == 0, trained.output
    result = json.loads(trained.stdout)
    assert result["train_accuracy"] == 1.0  # colours are linearly separable in these features
    check_exported_graph(out / "graph.pb", (32, 32))
    metadata = json.loads((out / "graph.pb.meta.json").read_text())
    extractor_id = create_extractor(str(module_dir)).spec.id
    assert metadata["extractor"] == {"name": str(module_dir), "id": extractor_id}
    assert (out / "bottlenecks" / extractor_id).is_dir()
    assert not (tmp_path / "hub_cache").exists()

    photos = sorted((images / "red").iterdir())[:3]
    labelled = CliRunner().invoke(
        label_image, ["--graph", str(out / "graph.pb"), "--json", *map(str, photos)]
    )
    assert labelled.exit_code == 0, labelled.output
    rows = [json.loads(line) for line in labelled.stdout.splitlines()]
    assert [row["label"] for row in rows] == ["red"] * 3
    # label-image feeds pixels / 255; the SavedModel's signature, fed [0, 1] directly, must agree.
    serve = tf.saved_model.load(str(out / "saved")).signatures["serving_default"]
    pixels = np.stack([load_image(photo, (32, 32)) for photo in photos]).astype(np.float32) / 255
    probabilities = serve(images=tf.constant(pixels))["probabilities"].numpy()
    labels = metadata["labels"]
    for row, expected in zip(rows, probabilities):
        got = {prediction["label"]: prediction["score"] for prediction in row["predictions"]}
        np.testing.assert_allclose([got[label] for label in labels], expected, rtol=1e-4, atol=1e-6)


def test_retrain_and_label_image_with_keras_backbone(tmp_path, no_network):
    from click.testing import CliRunner

    from retrainer.cli.label_image import main as label_image
    from retrainer.cli.retrain import main as retrain
    from tests.fixtures_data import make_color_image_dir

    images = make_color_image_dir(tmp_path / "colors", per_class=6)
    out = tmp_path / "out"
    handle = "keras:MobileNetV2,alpha=0.35,weights=random"

    trained = CliRunner().invoke(retrain, retrain_args(images, out, handle, "--image_size", "96"))

    assert trained.exit_code == 0, trained.output
    check_exported_graph(out / "graph.pb", (96, 96))
    metadata = json.loads((out / "graph.pb.meta.json").read_text())
    assert metadata["extractor"]["id"].startswith("keras-mobilenetv2_a0.35-")
    assert (metadata["input_height"], metadata["input_width"]) == (96, 96)
    labelled = CliRunner().invoke(
        label_image, ["--graph", str(out / "graph.pb"), "--json", str(images)]
    )
    assert labelled.exit_code == 0, labelled.output
    rows = [json.loads(line) for line in labelled.stdout.splitlines()]
    assert len(rows) == 18
    for row in rows:
        assert {p["label"] for p in row["predictions"]} == {"red", "green", "blue"}
        assert sum(p["score"] for p in row["predictions"]) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(
    "module_args, exit_code, message",
    [
        (["--image_size", "48"], 2, "takes 32x32 images; --image_size=48 conflicts with it"),
        (["--tfhub_module", "keras:ResNet51"], 2, "`keras:` name must be one of"),
    ],
)
def test_retrain_reports_extractor_errors(module_args, exit_code, message, tiny_hub_module, tmp_path):
    from click.testing import CliRunner

    from retrainer.cli.retrain import main as retrain
    from tests.fixtures_data import make_color_image_dir

    images = make_color_image_dir(tmp_path / "colors", per_class=3)
    args = retrain_args(images, tmp_path / "out", str(tiny_hub_module)) + module_args
    result = CliRunner().invoke(retrain, args)
    assert result.exit_code == exit_code
    assert result.stderr.startswith("Error: ") and message in result.stderr


def test_retrain_with_unreachable_remote_module_exits_4(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from retrainer.cli.retrain import main as retrain
    from tests.fixtures_data import make_color_image_dir

    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub_cache"))
    images = make_color_image_dir(tmp_path / "colors", per_class=3)
    handle = f"https://127.0.0.1:{unused_local_port()}/google/imagenet/inception_v3/feature_vector/5"
    result = CliRunner().invoke(retrain, retrain_args(images, tmp_path / "out", handle))
    assert result.exit_code == 4
    assert result.stderr.startswith(f"Error: could not download TF Hub module {handle!r}")


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, size, expected_input",
    [
        # What each family's preprocess_input does to [0, 255], written out independently.
        ("ResNet50", 64, lambda x: x[..., ::-1] * 255.0 - np.float32([103.939, 116.779, 123.68])),
        ("Xception", 71, lambda x: x * 2.0 - 1.0),
        ("EfficientNetB0", 64, lambda x: x * 255.0),  # rescales inside the model
        ("MobileNetV3Small", 64, lambda x: x * 255.0),  # rescales inside the model
    ],
    ids=["ResNet50", "Xception", "EfficientNetB0", "MobileNetV3Small"],
)
def test_keras_families_preprocess_and_freeze(name, size, expected_input, no_network):
    extractor = create_extractor(f"keras:{name},weights=random", image_size=size)
    images = random_images(2, (size, size))
    want = extractor.model(tf.constant(expected_input(images)), training=False).numpy()
    np.testing.assert_allclose(extractor(tf.constant(images)).numpy(), want, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(run_frozen(freeze(extractor), images), want, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_keras_backbone_in_saved_model_export(tmp_path, no_network):
    from click.testing import CliRunner

    from retrainer.cli.retrain import main as retrain
    from tests.fixtures_data import make_color_image_dir

    images = make_color_image_dir(tmp_path / "colors", per_class=6)
    out = tmp_path / "out"
    handle = "keras:MobileNetV2,alpha=0.35,weights=random"
    args = retrain_args(
        images, out, handle, "--image_size", "96", "--saved_model_dir", str(out / "saved")
    )
    assert CliRunner().invoke(retrain, args).exit_code == 0
    serve = tf.saved_model.load(str(out / "saved")).signatures["serving_default"]
    probabilities = serve(images=tf.constant(random_images(2, (96, 96))))["probabilities"].numpy()
    assert probabilities.shape == (2, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
