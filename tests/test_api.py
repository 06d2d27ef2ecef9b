"""The Python API (`import retrainer`): retrain on real images, load every export kind, predict
the same labels as `label-image --json`, and check options exactly as the command line does."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import retrainer
from retrainer.cli.label_image import main as label_image
from retrainer.cli.retrain import main as retrain_cli
from retrainer.config import RetrainConfig
from retrainer.errors import DataError, UnreadableImagesError, UsageError
from tests.fixtures_data import fashion_mnist_idx_dir, fashion_mnist_module
from tests.fixtures_photos import PHOTOS, clipart, photo

CLASSES = ("Bag", "Sandal", "Trouser", "Pullover")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`retrainer.retrain` on 4 real Fashion-MNIST classes x 20, the default extractor, 200 SGD
    steps, writing every export kind; plus query images of other shapes."""
    root = tmp_path_factory.mktemp("api")
    images = fashion_mnist_module().write_image_folder(fashion_mnist_idx_dir(), root / "all",
                                                       per_class=20)
    image_dir = root / "images"
    image_dir.mkdir()
    for name in CLASSES:
        (image_dir / name).symlink_to(images / name)
    out = root / "out"
    result = retrainer.retrain(
        str(image_dir), how_many_training_steps=200, bottleneck_dir=root / "cache",
        output_graph=out / "output_graph.pb", output_labels=out / "output_labels.txt",
        summaries_dir=out / "logs", checkpoint_path=out / "checkpoint" / "head",
        audit_file=out / "audit.json", metrics_file=out / "metrics.json", report_html="",
        tflite_output_file=str(out / "model.tflite"), saved_model_dir=out / "saved_model",
        onnx_output_file=out / "model.onnx", show_progress=False)
    queries = root / "queries"
    queries.mkdir()
    rng = np.random.default_rng(0)
    for name in PHOTOS[:4]:  # camera-size JPEGs (decoded at a reduced scale) and alpha clipart
        photo(name).resize((1600, 1200)).save(queries / f"{name}.jpg", quality=90)
        clipart(photo(name), rng, size=300).save(queries / f"{name}_clip.png")
    for path in sorted(image_dir.glob("*/*.png"))[::7]:
        (queries / f"fm_{path.parent.name}_{path.name}").write_bytes(path.read_bytes())
    return result, out, sorted(queries.iterdir())


def label_image_top1(model: Path, images: list[Path]) -> list[str]:
    outcome = CliRunner().invoke(label_image, ["--graph", str(model), "--json",
                                               *map(str, images)])
    assert outcome.exit_code == 0, outcome.output
    return [json.loads(line)["label"] for line in outcome.stdout.splitlines()]


def test_import_retrainer_does_not_load_tensorflow():
    code = ("import sys, retrainer; assert 'tensorflow' not in sys.modules; "
            "assert callable(retrainer.retrain) and 'tensorflow' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_retrain_returns_the_run_s_result(trained):
    result, out, _ = trained
    assert result.labels == tuple(sorted(name.lower() for name in CLASSES))
    assert result.test_accuracy is not None and result.test_accuracy >= 0.5
    assert result.head["solver"] == "sgd"  # how_many_training_steps selects retrain.py's SGD
    steps = [point.step for point in result.history]
    assert steps == sorted(steps) and steps[-1] == 199 and len(steps) == 21  # every 10 steps
    assert Path(result.outputs["output_graph"]) == out / "output_graph.pb"
    assert json.loads((out / "metrics.json").read_text()) == json.loads(
        json.dumps(result.to_json()))


@pytest.mark.parametrize("kind", ["output_graph.pb", "model.tflite", "saved_model", "model.onnx"])
def test_predict_matches_label_image(trained, kind):
    _, out, queries = trained
    model = retrainer.load(out / kind)
    predictions = model.predict(queries, top_k=3)
    assert [p.label for p in predictions] == label_image_top1(out / kind, queries)
    assert model.labels == ("bag", "pullover", "sandal", "trouser")
    rejected = CliRunner().invoke(label_image, ["--graph", str(out / kind), "--json",
                                                "--reject", *map(str, queries)])
    for prediction, line in zip(predictions, rejected.stdout.splitlines()):
        assert prediction.labels is None  # a single-label model
        answer = json.loads(line)
        assert prediction.unknown == answer["unknown"]
        assert prediction.novelty == pytest.approx(answer["novelty"], abs=1e-6)
    for prediction in predictions:
        assert len(prediction.top_k) == 3 and prediction.top_k[0] == (prediction.label,
                                                                        prediction.score)
        assert [score for _, score in prediction.top_k] == sorted(
            (score for _, score in prediction.top_k), reverse=True)


def test_pil_images_and_arrays_give_the_pixels_files_give(trained):
    _, out, queries = trained
    pngs = [path for path in queries if path.suffix == ".png"]  # lossless: same pixels any way
    with retrainer.load(out / "output_graph.pb") as model:
        from_paths = model.predict(pngs)
        from_pil = model.predict([Image.open(path) for path in pngs])
        grey = [path for path in pngs if Image.open(path).mode == "L"]
        arrays = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in grey])
        from_batch = model.predict(arrays)
        single = model.predict(arrays[0])
    assert same_predictions(from_pil, from_paths)
    assert same_predictions(from_batch, [p for path, p in zip(pngs, from_paths) if path in grey])
    assert same_predictions(single, from_batch[:1])


def same_predictions(left, right):
    """The same labels in the same order; scores and novelty to float32 rounding (a batch's size
    picks the kernels, and so the order of their sums: one ulp apart on an AVX2 CPU)."""
    def pairs(a, b):
        return (a is None) == (b is None) and (a is None or (
            [label for label, _ in a] == [label for label, _ in b]
            and [score for _, score in a] == pytest.approx([score for _, score in b], abs=1e-6)))

    return len(left) == len(right) and all(
        a.label == b.label and a.score == pytest.approx(b.score, abs=1e-6)
        and pairs(a.top_k, b.top_k) and pairs(a.labels, b.labels) and a.unknown == b.unknown
        and (a.novelty is None) == (b.novelty is None)
        and (a.novelty is None or a.novelty == pytest.approx(b.novelty, abs=1e-6))
        for a, b in zip(left, right))


def test_load_and_predict_errors_are_retrainer_errors(trained, tmp_path):
    _, out, queries = trained
    with pytest.raises(UsageError, match=r"no such|does not exist|cannot read"):
        retrainer.load(tmp_path / "missing.pb")
    model = retrainer.load(out / "output_graph.pb")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really")
    with pytest.raises(UnreadableImagesError, match=r"broken\.jpg"):
        model.predict([queries[0], broken])
    with pytest.raises(UsageError, match="uint8 RGB pixels"):
        model.predict(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(UsageError, match="top_k"):
        model.predict(queries[0], top_k=0)


def test_options_are_the_command_line_s(tmp_path):
    config = retrainer.api.retrain_config("photos/", labels_output_file="l.txt", batch_size=32,
                                          train_epochs=2, validation_split=0.2,
                                          tflite_quantization="int8",
                                          how_many_training_steps=None, seed=np.int64(3))
    assert (str(config.output_labels), config.train_batch_size, config.validation_percentage,
            config.tflite_quantization, config.seed, config.training.solver) == (
        "l.txt", 32, 20.0, ("int8",), 3, "sgd")
    assert config.image_dir == "photos/"  # as typed, for --split_compat retrain_py
    for options, message in [
        ({"how_many_trainig_steps": 5}, "did you mean how_many_training_steps="),
        ({"how_many_training_steps": "200"}, "how_many_training_steps= must be an integer"),
        ({"json": True}, "command-line switch"),
        ({"l1_regularizer": 0.1}, "use --l2_regularizer"),
        ({"batch_size": 8, "train_batch_size": 8}, "set the same option"),
        ({"validation_percentage": -1}, "--validation_percentage must be a number from 0"),
    ]:
        with pytest.raises(UsageError, match=message):
            retrainer.api.retrain_config("photos", **options)
    one_class = tmp_path / "one"
    (one_class / "roses").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(one_class / "roses" / "a.png")
    with pytest.raises(DataError, match="only 1 class"):
        retrainer.retrain(one_class, bottleneck_dir=tmp_path / "cache")


def _out_of_range(param):
    """A value click refuses for `param` (a range or a choice), or None."""
    kind = param.type
    if hasattr(kind, "min") and kind.min is not None:
        return kind.min - 1 if not getattr(kind, "min_open", False) else kind.min
    if hasattr(kind, "max") and kind.max is not None:
        return kind.max + 1
    if hasattr(kind, "choices"):
        return "no-such-choice"
    return None


RANGED = [param for param in retrain_cli.params
          if param.name in {field.name for field in dataclasses.fields(RetrainConfig)}
          and _out_of_range(param) is not None]


@pytest.mark.parametrize("param", RANGED, ids=[param.name for param in RANGED])
def test_the_api_refuses_what_the_command_line_refuses(param):
    """Every flag whose range or choices click checks is checked again by RetrainConfig, so the
    API (which has no click) validates exactly as `retrain` does."""
    value = _out_of_range(param)
    if param.multiple:
        value = (value,)
    cli = CliRunner().invoke(retrain_cli, ["--image_dir", "x", f"--{param.name}",
                                           str(value[0] if param.multiple else value)])
    assert cli.exit_code == 2
    with pytest.raises(UsageError, match=f"--{param.name}"):
        retrainer.api.retrain_config("x", **{param.name: value})
