"""Grad-CAM heat maps: `label-image --explain` on frozen graphs and SavedModels of a real
EfficientNet-Lite0, peak coordinates on resized and rotated inputs, safe file names, error cases."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from retrainer.cli.label_image import main as label_image_main
from retrainer.explain.heatmap import MAX_NAME_BYTES, HeatmapNames, peak, picture_size

SIZE = 64  # EfficientNet-Lite0 at 64x64: a 2x2 map, real weights, fast


@pytest.fixture(scope="module")
def lite_models(tmp_path_factory):
    """A real EfficientNet-Lite0 (64x64) with a seeded 3-class head and a novelty output, as
    retrain exports: frozen graph + SavedModel."""
    from retrainer.exports.classifier import Classifier
    from retrainer.exports.graph import GraphExporter
    from retrainer.exports.saved_model import write_saved_model
    from retrainer.extractors import create_extractor
    from retrainer.formats.graph_contract import write_labels
    from retrainer.training.head_layer import initial_head
    from retrainer.training.novelty import fit_novelty

    folder = tmp_path_factory.mktemp("lite")
    extractor = create_extractor("efficientnet_lite0", SIZE)
    vectors = np.random.default_rng(0).random((48, extractor.spec.vector_size), np.float32)
    novelty = fit_novelty(vectors[:32], np.arange(32) % 3, vectors[32:])
    classifier = Classifier(extractor, initial_head(extractor.spec.vector_size, 3, seed=1),
                            ("a", "b", "c"), "final_result", novelty)
    GraphExporter(classifier).write_graph(folder / "graph.pb")
    write_labels(folder / "output_labels.txt", classifier.label_names)
    write_saved_model(classifier, folder / "saved_model")
    return folder


def label_image(*args: str):
    return CliRunner().invoke(label_image_main, list(args))


def write_photo(path: Path, size: tuple[int, int], orientation: int = 1) -> Path:
    """A (height, width) image with a bright square in its top-right quarter; EXIF orientation."""
    height, width = size
    pixels = np.full((height, width, 3), 40, np.uint8)
    pixels[height // 8: height // 3, width * 2 // 3: width * 7 // 8] = (250, 220, 30)
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, quality=95)
    return path


def same_ranking(left, right):
    """The same labels in the same order, their scores to float32 rounding (the graph run with
    its map output fetched too may sum in another order)."""
    return ([row["label"] for row in left] == [row["label"] for row in right]
            and [row["score"] for row in left] == pytest.approx([row["score"] for row in right],
                                                                abs=1e-6))


@pytest.mark.parametrize("model", ["graph.pb", "saved_model"])
def test_explain_writes_a_picture_and_the_peak_in_image_pixels(lite_models, tmp_path, model):
    wide = write_photo(tmp_path / "wide.jpg", (300, 500))
    big = write_photo(tmp_path / "big.jpg", (1600, 2400))
    turned = write_photo(tmp_path / "turned.jpg", (300, 500), orientation=6)  # shown 500 x 300
    out = tmp_path / "maps"
    result = label_image("--graph", str(lite_models / model), "--explain", str(out), "--json",
                         str(wide), str(big), str(turned))
    assert result.exit_code == 0, result.output
    rows = {Path(row["path"]).name: row for row in map(json.loads, result.stdout.splitlines())}
    for name, shown in (("wide.jpg", (300, 500)), ("big.jpg", (1600, 2400)),
                        ("turned.jpg", (500, 300))):
        row = rows[name]
        assert row["heatmap"] == str(out / f"{name}.png")
        with Image.open(row["heatmap"]) as picture:
            assert picture.size[::-1] == picture_size(shown)  # (height, width), at most 1024
        y, x = row["peak"]
        assert 0 <= y < shown[0] and 0 <= x < shown[1]
        # a 2x2 map: the peak is the centre of one quarter of the upright image
        assert y in (shown[0] // 4, shown[0] * 3 // 4) and x in (shown[1] // 4, shown[1] * 3 // 4)
    graph = label_image("--graph", str(lite_models / model), "--json", str(wide))
    assert same_ranking(json.loads(graph.stdout)["predictions"], rows["wide.jpg"]["predictions"])
    # --reject beside --explain: the same run fetches the novelty output
    plain, explained = (json.loads(label_image("--graph", str(lite_models / model), "--json",
                                               "--reject", *extra, str(wide)).stdout)
                        for extra in ((), ("--explain", str(tmp_path / "again"))))
    assert explained["novelty"] == pytest.approx(plain["novelty"], abs=1e-5)
    assert explained["unknown"] == plain["unknown"]
    assert same_ranking(explained["predictions"], plain["predictions"])


def test_text_output_names_the_heat_map(lite_models, tmp_path):
    photo = write_photo(tmp_path / "p.png", (80, 120))
    result = label_image("--graph", str(lite_models / "graph.pb"), "--explain",
                         str(tmp_path / "m"), "--top_k", "1", str(photo))
    assert result.exit_code == 0, result.output
    assert f"heat map: {tmp_path / 'm' / 'p.png.png'} (peak y=" in result.stdout


@pytest.mark.parametrize("cell", [(0, 0), (2, 5), (6, 6), (3, 0)])
@pytest.mark.parametrize("size", [(224, 224), (300, 500), (1001, 17), (5, 3000)])
def test_peak_is_the_hottest_cells_centre_in_image_pixels(cell, size):
    heat = np.zeros((7, 7), np.float32)
    heat[cell] = 1.0
    heat[3, 3] = max(heat[3, 3], 0.5)
    y, x = peak(heat, size)
    assert (y, x) == (min(size[0] - 1, int((cell[0] + 0.5) * size[0] / 7)),
                      min(size[1] - 1, int((cell[1] + 0.5) * size[1] / 7)))
    for axis, at in enumerate((y, x)):  # pixel [at, at + 1) overlaps the cell
        assert cell[axis] * size[axis] / 7 < at + 1 and at < (cell[axis] + 1) * size[axis] / 7


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=300), min_size=1, max_size=8))
def test_heat_map_names_stay_in_the_folder_and_never_collide(tmp_path_factory, names):
    folder = Path("/explained/dir")
    writer = HeatmapNames(folder)
    paths = [writer.path_for(f"photos/{name}") for name in names]
    for path in paths:
        assert path.parent == folder
        assert path.name not in ("", ".", "..") and path.suffix == ".png"
        assert "/" not in path.name and "\\" not in path.name and "\0" not in path.name
        assert len(path.name.encode("utf-8")) <= MAX_NAME_BYTES + 20
        assert os.path.normpath(path) == str(path)
    assert len({path.name.casefold() for path in paths}) == len(paths)


def test_dataset_names_that_try_to_escape_stay_inside(tmp_path):
    writer = HeatmapNames(tmp_path)
    for name in ("../../etc/passwd", "..", "a\\..\\b.jpg", "x\nnew.jpg", "." * 3):
        path = writer.path_for(name)
        assert path.parent == tmp_path and ".." != path.name


def test_tflite_onnx_and_other_extractors_exit_2(deployed_run, lite_models, tmp_path):
    photo = write_photo(tmp_path / "p.jpg", (64, 64))
    for model in (deployed_run.tflite["none"], deployed_run.graph, deployed_run.saved_model):
        result = label_image("--graph", str(model), "--explain", str(tmp_path / "m"), str(photo))
        assert result.exit_code == 2, (model, result.output)
        assert result.stderr.startswith("Error: --explain") and result.stderr.count("\n") == 1
    assert "extractor 'tiny_test'" in result.stderr and "keras:" in result.stderr
    alone = tmp_path / "alone.pb"  # a graph without its sidecar: which extractor is unknown
    alone.write_bytes((lite_models / "graph.pb").read_bytes())
    result = label_image("--graph", str(alone), "--labels", str(lite_models / "output_labels.txt"),
                         "--explain", str(tmp_path / "m"), str(photo))
    assert result.exit_code == 2 and "alone.pb.meta.json" in result.stderr
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())



def test_report_section_pairs_each_image_with_its_heat_map(lite_models, tmp_path):
    from retrainer.reports.explanations import Explained, explanation_section

    graph = (lite_models / "graph.pb").read_bytes()
    images = [Explained(write_photo(tmp_path / f"{index}.jpg", (48, 80)), f"x/<b>{index}.jpg",
                        "a", "b" if index else "a") for index in range(3)]
    images.append(Explained(tmp_path / "gone.jpg", "x/gone.jpg", "a", "a"))  # deleted since
    section = explanation_section(lambda: graph, "Placeholder:0", "final_result:0",
                                  "efficientnet_lite0", (SIZE, SIZE), images, 2)
    assert section.id == "explanations"
    assert section.body.count('<figure class="pair">') == 3
    assert section.body.count('src="data:image/png;base64,') == 6  # image + heat map each
    assert "x/&lt;b&gt;1.jpg" in section.body and "<b>1" not in section.body
    assert "over 2 misclassified test images" in section.body


def test_report_heat_maps_are_cached_by_graph_and_pixels(lite_models, tmp_path, caplog):
    """A rerun with the same frozen graph and images reads the maps back; a damaged cache file
    is computed again; other images (or another graph) get their own file; a cache that cannot
    be written is a warning."""
    from retrainer.reports.explanations import Explained, explanation_section

    graph = (lite_models / "graph.pb").read_bytes()
    images = [Explained(write_photo(tmp_path / f"{index}.jpg", (48, 80)), f"{index}.jpg", "a",
                        "b" if index else "a") for index in range(2)]
    cache = tmp_path / "cache"

    def gallery(chosen, root=cache):
        section = explanation_section(lambda: graph, "Placeholder:0", "final_result:0",
                                      "efficientnet_lite0", (SIZE, SIZE), chosen, 1, root)
        return section.body.split('<div class="gallery">')[1]

    first = gallery(images)
    (stored,) = (cache / "heat-maps-v1").rglob("*.maps")
    (figures,) = (cache / "heat-maps-v1").rglob("*.html")  # the figures, kept whole
    maps = np.load(stored)
    assert maps.shape[0] == 2 and maps.dtype == np.float32
    np.save(stored.with_suffix(".npy"), np.zeros_like(maps))
    stored.write_bytes(stored.with_suffix(".npy").read_bytes())
    assert gallery(images) == first  # the kept figures: neither maps nor pictures made
    figures.unlink()
    assert gallery(images) != first  # the maps read back, not computed
    figures.unlink()
    stored.write_bytes(b"\x93NUMPY garbage")  # damaged: computed again and rewritten
    assert gallery(images) == first
    assert np.array_equal(np.load(stored), maps)
    gallery(images[:1])
    assert len(list((cache / "heat-maps-v1").rglob("*.maps"))) == 2
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would be")
    with caplog.at_level(logging.WARNING):
        assert gallery(images, blocked) == first
    assert any("made again" in record.getMessage() for record in caplog.records)


def test_report_says_why_there_are_no_heat_maps(deployed_run):
    report = (deployed_run.out / "report.html").read_text()
    assert '<section id="explanations">' in report
    assert "No heat maps: extractor tiny_test is not one of" in report


@pytest.mark.slow
def test_report_heat_maps_render_in_chromium(tmp_path, fashion_mnist_dir):
    """A real EfficientNet-Lite0 run on Fashion-MNIST: the report's heat-map section, alone on a
    page, renders in headless Chromium with saturated heat colours over the grey items."""
    from retrainer.cli.retrain import main as retrain_main
    from tests.fixtures_pipeline import retrain_args
    from tests.test_report_browser import screenshot

    args = retrain_args(tmp_path, fashion_mnist_dir, "--report_explanations", "2",
                        extractor="efficientnet_lite0", steps=300)
    result = CliRunner().invoke(retrain_main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    report = (tmp_path / "out" / "report.html").read_text()
    section = report[report.index('<section id="explanations">'):]
    section = section[:section.index("</section>") + len("</section>")]
    pairs = section.count('<figure class="pair">')
    wrong = len(json.loads((tmp_path / "out" / "metrics.json").read_text())["misclassified"])
    assert wrong < pairs <= wrong + 2 * 10  # every wrong one, at most 2 correct per class
    page = tmp_path / "section.html"
    page.write_text(report[:report.index("<body>") + 6] + section + "</body></html>")
    image, console = screenshot(page, tmp_path / "section.png", tmp_path / "profile")
    assert console == []
    pixels = image.astype(int)
    hot = (pixels[..., 0] > 170) & (pixels[..., 1] < 110) & (pixels[..., 2] < 90)
    assert hot.sum() > pairs * 100, "each heat map has a red core"


def _frozen_graph(body, size: int):
    """A frozen classifier GraphDef: Placeholder [N, size, size, 3] -> body -> final_result."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, size, size, 3], name="Placeholder")
        vectors = body(tf, images)
        weights = tf.constant(np.random.default_rng(0).normal(size=(vectors.shape[-1], 3)),
                              tf.float32)
        tf.nn.softmax(tf.matmul(vectors, weights), name="final_result")
    return graph.as_graph_def()


def _downsampling_to_one_cell(tf, images):
    """MobileNetV2's last stride-2 block at a small input: a 2x2 expansion, zero-padded to 3x3,
    a strided 3x3 convolution down to 1x1, then the global average pool."""
    rng = np.random.default_rng(1)
    expanded = tf.nn.relu6(tf.nn.conv2d(images, rng.normal(size=(1, 1, 3, 8)).astype(np.float32),
                                        1, "VALID"), name="expand_relu")
    padded = tf.pad(expanded, [[0, 0], [0, 1], [0, 1], [0, 0]])
    reduced = tf.nn.relu6(tf.nn.conv2d(padded, rng.normal(size=(3, 3, 8, 16)).astype(np.float32),
                                       2, "VALID"))
    return tf.reduce_mean(reduced, axis=[1, 2])


def test_a_one_cell_last_map_is_explained_on_the_nearest_larger_map():
    """A backbone that downsamples 32x, at --image_size 32, pools a 1x1 map (MobileNetV2): the
    heat map comes from the last map with extent on the image's path, not its padded copy or a
    3x3 kernel."""
    from retrainer.explain.gradcam import GradCam

    gradcam = GradCam.from_graph_def(_frozen_graph(_downsampling_to_one_cell, 2),
                                     "Placeholder:0", "final_result:0", "a test graph")
    try:
        assert gradcam.feature_map.op.name == "expand_relu"
        explanation = gradcam.explain(np.random.default_rng(2).random((2, 2, 2, 3), np.float32))
    finally:
        gradcam.close()
    assert explanation.maps.shape == (2, 2, 2) and np.isfinite(explanation.maps).all()
    assert explanation.maps.max() == 1.0


def test_report_section_notes_a_model_it_cannot_explain(tmp_path, caplog):
    """No pooled map at all: the report's section says why in one line and logs a warning; the
    run is not failed by an extra."""
    from retrainer.reports.explanations import Explained, explanation_section

    graph_def = _frozen_graph(lambda tf, images: tf.reshape(images, [-1, 8 * 8 * 3]), 8)
    images = [Explained(write_photo(tmp_path / "a.jpg", (8, 8)), "x/a.jpg", "a", "a")]
    section = explanation_section(lambda: graph_def.SerializeToString(), "Placeholder:0",
                                  "final_result:0", "keras:Flat", (8, 8), images, 1)
    assert "No heat maps: cannot explain the trained model" in section.body
    assert "<figure" not in section.body
    assert [record.levelname for record in caplog.records
            if "no heat maps" in record.getMessage()] == ["WARNING"]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0.0, 1.0, width=32) | st.just(float("nan")), min_size=1, max_size=64),
       st.sampled_from([np.float32, np.float64]))
def test_heat_colours_are_matplotlibs_jet(values, dtype):
    """The heat maps' colours are matplotlib's "jet" colormap's, to the bit (0, 1, NaN too),
    without importing matplotlib."""
    from matplotlib import colormaps

    from retrainer.explain.heatmap import jet

    heat = np.array(values, dtype)
    assert np.array_equal(jet(heat), colormaps["jet"](heat)[..., :3])
    grid = np.linspace(0.0, 1.0, 4097, dtype=dtype).reshape(17, 241)  # every colour
    assert np.array_equal(jet(grid), colormaps["jet"](grid)[..., :3])
