"""--tta flip: every export answers the same for an image and its mirror image, and that answer
is the head's on the mean of both images' vectors; --tta auto (the default) drops flip where the
validation split shows it loses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image

import retrainer
from retrainer.cli.retrain import main as retrain_main
from retrainer.exports.classifier import Classifier
from retrainer.training.head_layer import initial_head
from tests.fixtures_data import make_color_image_dir
from tests.fixtures_extractors import TinyExtractor
from tests.fixtures_pipeline import retrain_args


def asymmetric_images(count: int = 4) -> np.ndarray:
    """uint8 [N, 32, 32, 3] whose left and right halves differ (a flip changes the vectors)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    images[:, :, :16] //= 4
    return images


def test_the_head_reads_the_mean_of_both_vectors():
    extractor, head = TinyExtractor(), initial_head(16, 3, seed=0)
    flipped = Classifier(extractor, head, ("a", "b", "c"), "final_result", tta="flip")
    plain = Classifier(extractor, head, ("a", "b", "c"), "final_result")
    images = tf.constant(asymmetric_images(), tf.float32) / 255
    mirrored = images[:, :, ::-1]
    expected = head.probabilities((extractor(images) + extractor(mirrored)) / 2)
    np.testing.assert_allclose(flipped.classify(images), expected, atol=1e-6)
    np.testing.assert_allclose(flipped.classify(mirrored), expected, atol=1e-6)
    assert not np.allclose(extractor(images), extractor(mirrored), atol=1e-3)  # not symmetric
    assert flipped.metadata()["tta"] == "flip" and "tta" not in plain.metadata()


def test_every_export_is_mirror_invariant(tmp_path):
    out = tmp_path / "out"
    args = retrain_args(tmp_path, make_color_image_dir(tmp_path / "images", per_class=8), "--tta",
                        "flip", "--saved_model_dir", str(out / "saved_model"),
                        "--tflite_output_file", str(out / "model.tflite"), "--report_html", "",
                        steps=None)
    result = CliRunner().invoke(retrain_main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "graph.pb.meta.json").read_text())["tta"] == "flip"
    images = asymmetric_images()
    for path in (out / "graph.pb", out / "saved_model", out / "model.tflite"):
        with retrainer.load(path, labels=out / "labels.txt") as model:
            scores = [[dict(p.top_k) for p in model.predict(batch, top_k=3)]
                      for batch in (images, np.ascontiguousarray(images[:, :, ::-1]))]
        for original, mirror in zip(*scores):
            assert original.keys() == mirror.keys(), path
            assert [original[k] for k in original] == pytest.approx(
                [mirror[k] for k in original], abs=1e-5), path


def mirrored_classes(root: Path, per_class: int = 20) -> Path:
    """Two classes each the mirror image of the other: bright on the left, bright on the right."""
    rng = np.random.default_rng(0)
    for label in ("left", "right"):
        (root / label).mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
            pixels[:, :16] += 180
            Image.fromarray(pixels if label == "left" else pixels[:, ::-1].copy()).save(
                root / label / f"{index}.png")
    return root


def test_auto_keeps_flip_off_where_the_mirror_image_is_another_class(tmp_path):
    out = tmp_path / "out"
    args = retrain_args(tmp_path, mirrored_classes(tmp_path / "images"), "--validation_percentage",
                        "30", "--report_html", "", "--json", steps=None)
    result = CliRunner().invoke(retrain_main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    tta = json.loads(result.stdout)["tta"]
    assert tta["mode"] == "none" and tta["images"] >= 6
    assert tta["flip_accuracy"] < tta["plain_accuracy"] == 1.0
    assert "tta" not in json.loads((out / "graph.pb.meta.json").read_text())


def test_auto_keeps_flip_where_mirror_images_look_alike(tmp_path):
    out = tmp_path / "out"
    args = retrain_args(tmp_path, make_color_image_dir(tmp_path / "images", per_class=10),
                        "--validation_percentage", "30", "--report_html", "", "--json", steps=None)
    result = CliRunner().invoke(retrain_main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    tta = json.loads(result.stdout)["tta"]
    assert tta["mode"] == "flip" and tta["images"] >= 3
    assert json.loads((out / "graph.pb.meta.json").read_text())["tta"] == "flip"


def test_the_check_takes_the_sample_drawn_ahead(tmp_path, monkeypatch):
    """The tta stage uses the mirrored sample drawn beside the audit (pipeline/ahead.py): the
    validation images are named alike on both sides, so it draws no sample of its own."""
    from retrainer.pipeline import stages

    def drawn_again(*args: object) -> None:
        raise AssertionError("the tta stage drew its own mirrored sample")

    monkeypatch.setattr(stages, "mirrored_sample", drawn_again)
    args = retrain_args(tmp_path, mirrored_classes(tmp_path / "images"), "--validation_percentage",
                        "30", "--report_html", "", "--json", steps=None)
    result = CliRunner().invoke(retrain_main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tta"]["images"] >= 6


def test_an_unknown_mode_is_a_usage_error(tmp_path):
    args = retrain_args(tmp_path, make_color_image_dir(tmp_path / "images"), "--tta", "crop")
    result = CliRunner().invoke(retrain_main, args)
    assert result.exit_code == 2 and "--tta" in result.output


def test_heat_maps_of_a_flip_graph_are_the_images_own(tmp_path):
    """Grad-CAM on a --tta flip graph: one map per image, the image's own (not its mirror's)."""
    from retrainer.explain.gradcam import GradCam
    from retrainer.exports.graph import GraphExporter
    from retrainer.extractors import create_extractor

    extractor = create_extractor("efficientnet_lite0", 64)  # real weights, a 2x2 map
    head = initial_head(extractor.spec.vector_size, 3, seed=1)
    images = np.zeros((3, 64, 64, 3), np.float32) + 0.15
    images[:, 8:24, 40:56] = (1.0, 0.85, 0.1)  # a bright square top right
    explained = {}
    for tta in ("none", "flip"):
        path = tmp_path / f"{tta}.pb"
        GraphExporter(Classifier(extractor, head, ("a", "b", "c"), "final_result", tta=tta)
                      ).write_graph(path)
        graph_def = tf.compat.v1.GraphDef.FromString(path.read_bytes())
        cam = GradCam.from_graph_def(graph_def, "Placeholder:0", "final_result:0", str(path))
        explained[tta] = cam.explain(images)
        cam.close()
    plain, flip = explained["none"], explained["flip"]
    assert flip.maps.shape == plain.maps.shape == (3, 2, 2)
    same = flip.classes == plain.classes
    assert same.any()
    np.testing.assert_allclose(flip.maps[same], plain.maps[same], atol=1e-4)
