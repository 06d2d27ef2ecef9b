"""label-image: results agree with TensorFlow's own label_image.py way of running a graph; output
formats parse; bad inputs give the documented one-line messages and exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image

from retrainer.classify.config import ClassifyConfig
from retrainer.classify.run import classify_images
from retrainer.cli.label_image import main
from retrainer.data.decoding import load_image
from retrainer.data.discovery import normalize_label
from retrainer.errors import EXIT_MODEL, EXIT_UNREADABLE_IMAGES, EXIT_USAGE
from tests.fixtures_label_image import RGB_LABELS

REPO = Path(__file__).resolve().parent.parent


def label_image_py(graph: Path, image: Path, size: tuple[int, int], input_mean: float = 0.0,
                   input_std: float = 255.0, pixels: np.ndarray | None = None) -> np.ndarray:
    """Scores float32 [C] the way TensorFlow's label_image.py computes them (tf.compat.v1).

    Decodes with TF ops and resize_bilinear like label_image.py, unless `pixels` (uint8 [H, W, 3])
    are given, then imports the GraphDef under "import/" and runs it in a Session.
    """
    if pixels is None:
        with tf.Graph().as_default(), tf.compat.v1.Session() as session:
            data = tf.io.read_file(str(image))
            decoded = tf.io.decode_image(data, channels=3, expand_animations=False)
            batch = tf.expand_dims(tf.cast(decoded, tf.float32), 0)
            resized = tf.compat.v1.image.resize_bilinear(batch, list(size))
            feed = session.run(tf.divide(tf.subtract(resized, [input_mean]), [input_std]))
    else:
        feed = (pixels[None].astype(np.float32) - input_mean) / input_std
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph.read_bytes())
    model = tf.Graph()
    with model.as_default():
        tf.compat.v1.import_graph_def(graph_def)
    with tf.compat.v1.Session(graph=model) as session:
        scores = session.run(
            model.get_operation_by_name("import/final_result").outputs[0],
            {model.get_operation_by_name("import/Placeholder").outputs[0]: feed},
        )
    return np.squeeze(scores, axis=0)


def assert_close(scores, reference) -> None:
    np.testing.assert_allclose(scores, reference, rtol=1e-5, atol=1e-7)


def run_cli(*args: object):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines()]


@pytest.fixture(scope="module")
def photos(tmp_path_factory, solid_images) -> list[Path]:
    """Solid colours plus two real photos (the cat and the espresso from scikit-image)."""
    import skimage.data

    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage.data.chelsea()).save(folder / "chelsea.jpg", quality=90)
    Image.fromarray(skimage.data.coffee()).save(folder / "coffee.png")
    return [*solid_images.values(), folder / "chelsea.jpg", folder / "coffee.png"]


@pytest.fixture
def graph_copy(tmp_path, tiny_graph) -> Path:
    """A private copy of the tiny graph's folder, free to damage."""
    shutil.copytree(tiny_graph.parent, tmp_path / "model")
    return tmp_path / "model" / tiny_graph.name


# --- agreement with label_image.py -------------------------------------------------------------------


def test_top1_matches_label_image_py(tiny_graph, photos):
    result = run_cli("--graph", tiny_graph, "--json", *photos)
    assert result.exit_code == 0, result.output
    lines = json_lines(result.stdout)
    assert [line["path"] for line in lines] == [str(path) for path in photos]
    for line, photo in zip(lines, photos):
        reference = label_image_py(tiny_graph, photo, (32, 32))
        assert line["label"] == RGB_LABELS[int(np.argmax(reference))], photo.name
    # The solid colours have known answers, independent of any code under test.
    assert [line["label"] for line in lines[:3]] == list(RGB_LABELS)


def test_retrained_graph_top1_matches_label_image_py(retrained_graph, photos):
    """A graph from the real `retrain` pipeline, read through its sidecar only (no flags)."""
    labels = retrained_graph.with_name("output_labels.txt").read_text().split()
    result = run_cli("--graph", retrained_graph, "--json", "--top_k", 3, *photos)
    assert result.exit_code == 0, result.output
    lines = json_lines(result.stdout)
    for line, photo in zip(lines, photos):
        assert line["label"] == labels[int(np.argmax(label_image_py(retrained_graph, photo, (32, 32))))]
        reference = label_image_py(retrained_graph, photo, (32, 32), pixels=load_image(photo, (32, 32)))
        scores = {prediction["label"]: prediction["score"] for prediction in line["predictions"]}
        assert_close([scores[label] for label in labels], reference)
    # Trained on colour folders: the solid colours come out right.
    assert [line["label"] for line in lines[:3]] == list(RGB_LABELS)


@pytest.mark.slow
def test_efficientnet_retrained_on_fashion_mnist(fashion_mnist_dir, fashion_mnist_holdout_dir, tmp_path):
    """The real model on real data: label-image agrees with label_image.py on held-out images."""
    from tests.fixtures_label_image import retrain

    graph = retrain(fashion_mnist_dir, tmp_path / "out", "efficientnet_lite0", steps=300)
    labels = graph.with_name("output_labels.txt").read_text().splitlines()
    holdout = sorted(fashion_mnist_holdout_dir.rglob("*.png"))
    result = run_cli("--json", "--graph", graph, fashion_mnist_holdout_dir)
    assert result.exit_code == 0, result.output
    lines = json_lines(result.stdout)
    assert sorted(Path(line["path"]) for line in lines) == holdout
    correct = 0
    for line in lines:
        path = Path(line["path"])
        reference = label_image_py(graph, path, (224, 224), pixels=load_image(path, (224, 224)))
        assert line["label"] == labels[int(np.argmax(reference))], path
        correct += line["label"] == normalize_label(path.parent.name)
    assert correct >= len(lines) // 2, f"{correct} of {len(lines)} held-out images right (chance: 10%)"


@pytest.mark.parametrize("mean, std", [(0.0, 255.0), (127.5, 127.5), (10.5, 300.25)])
def test_scores_match_session_run_on_same_pixels(tiny_graph, photos, mean, std):
    result = run_cli("--graph", tiny_graph, "--json", "--top_k", 3, "--input_mean", mean,
                     "--input_std", std, "--batch_size", 2, *photos)
    assert result.exit_code == 0, result.output
    for line, photo in zip(json_lines(result.stdout), photos):
        pixels = load_image(photo, (32, 32))
        reference = label_image_py(tiny_graph, photo, (32, 32), mean, std, pixels=pixels)
        scores = {prediction["label"]: prediction["score"] for prediction in line["predictions"]}
        assert_close([scores[label] for label in RGB_LABELS], reference)


def test_batching_does_not_change_results(tiny_graph, photos):
    def run(batch_size):
        config = ClassifyConfig(graph=tiny_graph, batch_size=batch_size, top_k=3)
        return [result.predictions for result in classify_images(config, photos * 3)]

    one_by_one, batched = run(1), run(8)
    assert len(batched) == 3 * len(photos)
    for single, batch in zip(one_by_one, batched):
        assert [p.label for p in single] == [p.label for p in batch]
        assert_close([p.score for p in single], [p.score for p in batch])


# --- output formats ----------------------------------------------------------------------------------


def test_json_lines(tiny_graph, solid_images):
    result = run_cli("--graph", tiny_graph, "--json", "--top-k", 2, *solid_images.values())
    assert result.exit_code == 0
    lines = json_lines(result.stdout)
    assert len(lines) == 3
    for line, (colour, path) in zip(lines, solid_images.items()):
        assert set(line) == {"path", "label", "score", "predictions"}
        assert line["path"] == str(path) and line["label"] == colour
        scores = [prediction["score"] for prediction in line["predictions"]]
        assert len(scores) == 2 and scores == sorted(scores, reverse=True) and line["score"] == scores[0]
        assert 0 < sum(scores) <= 1 + 1e-6


def test_text_output_one_image_is_label_image_py_format(tiny_graph, solid_images):
    result = run_cli("--graph", tiny_graph, solid_images["green"])
    assert result.exit_code == 0
    rows = [line.split(" ") for line in result.stdout.splitlines()]
    labels, scores = [label for label, _ in rows], [float(score) for _, score in rows]
    assert labels[0] == "green" and sorted(labels) == sorted(RGB_LABELS)
    assert scores == sorted(scores, reverse=True) and all(0 <= score <= 1 for score in scores)


def test_text_output_several_images_has_headers(tiny_graph, solid_images):
    red, blue = solid_images["red"], solid_images["blue"]
    result = run_cli("--graph", tiny_graph, "--top_k", 1, red, "--image", blue)
    assert result.exit_code == 0
    first, second = (block.splitlines() for block in result.stdout.split("\n\n"))
    assert first[0] == f"==> {red} <==" and first[1].startswith("red ") and len(first) == 2
    assert second[0] == f"==> {blue} <==" and second[1].startswith("blue ") and len(second) == 2


def test_quiet_prints_top1_per_image(tiny_graph, solid_images):
    single = run_cli("--graph", tiny_graph, "-q", solid_images["red"])
    assert single.exit_code == 0
    label, score = single.stdout.rstrip("\n").split("\t")
    assert label == "red" and 0.5 < float(score) <= 1
    several = run_cli("--graph", tiny_graph, "--quiet", *solid_images.values())
    rows = [line.split("\t") for line in several.stdout.splitlines()]
    assert [(path, label) for path, label, _ in rows] == [(str(p), c) for c, p in solid_images.items()]


def test_directory_is_searched_recursively_for_images_only(tiny_graph, solid_images, tmp_path):
    (tmp_path / "b" / "deeper").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    shutil.copy(solid_images["red"], tmp_path / "c.jpg")
    shutil.copy(solid_images["green"], tmp_path / "b" / "deeper" / "x.JPG")
    shutil.copy(solid_images["blue"], tmp_path / "a.jpeg")
    shutil.copy(solid_images["blue"], tmp_path / ".hidden" / "skip.jpg")
    shutil.copy(solid_images["blue"], tmp_path / ".skip.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    result = run_cli("--graph", tiny_graph, "--json", tmp_path)
    assert result.exit_code == 0, result.output
    found = [(Path(line["path"]).relative_to(tmp_path).as_posix(), line["label"])
             for line in json_lines(result.stdout)]
    assert found == [("a.jpeg", "blue"), ("b/deeper/x.JPG", "green"), ("c.jpg", "red")]


def test_without_sidecar_uses_graph_shape_and_labels_file_beside_it(graph_copy, solid_images):
    Path(f"{graph_copy}.meta.json").unlink()
    result = run_cli("--graph", graph_copy, "-q", solid_images["blue"])
    assert result.exit_code == 0, result.output
    assert result.stdout.split("\t")[0] == "blue"


def test_op_flags_accept_tensor_names_and_dash_spellings(tiny_graph, solid_images):
    result = run_cli("--graph", tiny_graph, "--input-layer", "Placeholder:0", "--output_layer",
                     "final_result:0", "--input-height", 32, "--input_width", 32, "--top-k", 1, "-q",
                     solid_images["green"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("green\t")


# --- errors: message and exit code -------------------------------------------------------------------


def test_unreadable_images_among_good_ones_exit_5_and_the_rest_are_classified(
    tiny_graph, solid_images, tmp_path
):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(solid_images["red"].read_bytes()[:200])
    missing = tmp_path / "missing.jpg"
    images = [solid_images["red"], broken, solid_images["green"], missing, solid_images["blue"]]
    result = run_cli("--graph", tiny_graph, "--json", "--batch_size", 2, *images)
    assert result.exit_code == EXIT_UNREADABLE_IMAGES == 5
    lines = json_lines(result.stdout)
    assert [line["path"] for line in lines] == [str(path) for path in images]
    assert [line.get("label") for line in lines] == ["red", None, "green", None, "blue"]
    assert "truncated or corrupt" in lines[1]["error"] and "No such file" in lines[3]["error"]
    assert f"Error: cannot read 2 of 5 images (first: {broken}: " in result.stderr
    assert "the other 3 were classified" in result.stderr

    text = run_cli("--graph", tiny_graph, broken, solid_images["green"])
    assert text.exit_code == 5 and "==> " in text.stdout and "green " in text.stdout
    assert f"WARNING: cannot read {broken}" in text.stderr


def test_single_unreadable_image(tiny_graph, tmp_path):
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("hello")
    result = run_cli("--graph", tiny_graph, "-q", not_image)
    assert result.exit_code == 5 and result.stdout == ""
    assert result.stderr == f"Error: cannot read {not_image}: not an image (a text file)\n"


def test_missing_graph(tmp_path, solid_images):
    result = run_cli("--graph", tmp_path / "nope.pb", solid_images["red"])
    assert result.exit_code == EXIT_USAGE
    assert result.stderr.startswith(f"Error: cannot read graph {tmp_path / 'nope.pb'}: No such file")


@pytest.mark.parametrize(
    "content", [b"", b"hello, I am not a graph\n", os.urandom(2000)], ids=["empty", "text", "random"]
)
def test_corrupt_graph(graph_copy, solid_images, content):
    graph_copy.write_bytes(content)
    result = run_cli("--graph", graph_copy, solid_images["red"])
    assert result.exit_code == EXIT_MODEL
    assert f"Error: {graph_copy} is not a frozen TensorFlow graph (GraphDef)" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_truncated_graph(graph_copy, solid_images):
    graph_copy.write_bytes(graph_copy.read_bytes()[:-100])
    result = run_cli("--graph", graph_copy, solid_images["red"])
    assert result.exit_code == EXIT_MODEL, result.output
    assert result.stderr.startswith("Error: ") and len(result.stderr.splitlines()) == 1


def test_wrong_labels_count(tiny_graph, solid_images, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("red\ngreen\nblue\npurple\n")
    result = run_cli("--graph", tiny_graph, "--labels", labels, solid_images["red"])
    assert result.exit_code == EXIT_MODEL
    assert result.stderr == (
        f"Error: graph {tiny_graph}'s output 'final_result' scores 3 classes, but labels file {labels} "
        "lists 4 labels; pass the labels file written together with this graph (--labels)\n"
    )


def test_missing_labels(graph_copy, solid_images, tmp_path):
    result = run_cli("--graph", graph_copy, "--labels", tmp_path / "labels.txt", solid_images["red"])
    assert result.exit_code == EXIT_USAGE
    missing = tmp_path / "labels.txt"
    assert result.stderr == f"Error: cannot read labels file {missing}: No such file or directory\n"
    Path(f"{graph_copy}.meta.json").unlink()
    graph_copy.with_name("output_labels.txt").unlink()
    result = run_cli("--graph", graph_copy, solid_images["red"])
    assert result.exit_code == EXIT_USAGE
    assert result.stderr == (
        f"Error: no labels for graph {graph_copy}: it has no .meta.json sidecar and there is no "
        "output_labels.txt next to it; pass --labels FILE\n"
    )


def test_unknown_output_layer_lists_candidates(tiny_graph, solid_images):
    result = run_cli("--graph", tiny_graph, "--output_layer", "final_reslt", solid_images["red"])
    assert result.exit_code == EXIT_MODEL
    assert result.stderr.startswith(
        f"Error: output op 'final_reslt' is not in graph {tiny_graph}; likely outputs"
    )
    assert "final_result" in result.stderr and "--output_layer" in result.stderr


def test_unknown_output_layer_on_retrained_graph_lists_final_result(retrained_graph, solid_images):
    result = run_cli("--graph", retrained_graph, "--output_layer", "softmax", solid_images["red"])
    assert result.exit_code == EXIT_MODEL
    assert result.stderr == (
        f"Error: output op 'softmax' is not in graph {retrained_graph}; likely outputs: final_result, "
        "Identity_1, final_retrain_ops/Softmax, Identity. Pass --output_layer with one of them\n"
    )


def test_unknown_input_layer_lists_placeholders(tiny_graph, solid_images):
    result = run_cli("--graph", tiny_graph, "--input-layer", "input", solid_images["red"])
    assert result.exit_code == EXIT_MODEL
    assert result.stderr == (
        f"Error: input op 'input' is not in graph {tiny_graph}; Placeholder ops: Placeholder. "
        "Pass --input_layer with one of them\n"
    )


def test_input_size_contradicting_graph(tiny_graph, solid_images):
    result = run_cli("--graph", tiny_graph, "--input_height", 299, "--input_width", 299,
                     solid_images["red"])
    assert result.exit_code == EXIT_USAGE
    assert "takes height 32, but input_height is 299" in result.stderr


def test_corrupt_sidecar(graph_copy, solid_images):
    Path(f"{graph_copy}.meta.json").write_text("{not json")
    result = run_cli("--graph", graph_copy, solid_images["red"])
    assert result.exit_code == EXIT_MODEL
    assert result.stderr.startswith(f"Error: cannot read metadata {graph_copy}.meta.json: ")


def test_sidecar_of_another_graph(retrained_graph, tiny_graph, solid_images, tmp_path):
    """A graph replaced without its metadata: the sidecar's labels might not match, so refuse."""
    shutil.copytree(retrained_graph.parent, tmp_path / "model")
    graph = tmp_path / "model" / retrained_graph.name
    graph.write_bytes(tiny_graph.read_bytes())
    result = run_cli("--graph", graph, solid_images["red"])
    assert result.exit_code == EXIT_MODEL
    expected = f"Error: metadata {graph}.meta.json describes another version of {graph} "
    assert result.stderr.startswith(expected)


def test_empty_folder_and_no_images(tiny_graph, tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    empty = run_cli("--graph", tiny_graph, tmp_path)
    assert empty.exit_code == EXIT_USAGE
    assert empty.stderr.startswith("Error: no image files (") and f"in folder {tmp_path}" in empty.stderr
    nothing = run_cli("--graph", tiny_graph)
    assert nothing.exit_code == EXIT_USAGE and "Error: no images given" in nothing.stderr


def test_json_and_quiet_exclude_each_other(tiny_graph, solid_images):
    result = run_cli("--graph", tiny_graph, "--json", "-q", solid_images["red"])
    assert result.exit_code == EXIT_USAGE and "--json and --quiet" in result.stderr


# --- the real process --------------------------------------------------------------------------------


def test_real_process_streams_and_exit_code(tiny_graph, solid_images, tmp_path):
    """What a CI script sees: stdout holds only JSON lines, stderr the diagnosis, exit code 5."""
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    process = subprocess.run(
        [sys.executable, "-m", "retrainer.cli.label_image", "--graph", str(tiny_graph), "--json",
         str(solid_images["red"]), str(broken)],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert process.returncode == 5, process.stderr
    lines = json_lines(process.stdout)
    assert lines[0]["label"] == "red" and lines[1]["path"] == str(broken) and "error" in lines[1]
    assert process.stderr.rstrip().splitlines()[-1].startswith(f"Error: cannot read {broken}: ")


def test_help_does_not_import_tensorflow():
    code = "import sys, retrainer.cli.label_image; assert 'tensorflow' not in sys.modules, 'TF loaded'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
