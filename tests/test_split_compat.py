"""`--split_compat retrain_py`: every image lands in the split retrain.py chose for it.

The reference below is retrain.py's published `create_image_lists` algorithm (TensorFlow Hub's
examples/image_retraining/retrain.py), written out here: walk the class folders with tf.io.gfile,
glob `os.path.join(image_dir, dir_name, '*.' + extension)` for its five extensions, strip
`_nohash_.*$` from the globbed path, SHA-1 it, and map the hash to a percentage. It runs on real
files (Fashion-MNIST PNGs and JPEGs, some grouped by `_nohash_`), with --image_dir spelt as users
type it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil

import pytest
from click.testing import CliRunner

from retrainer.cli.retrain import main as retrain
from retrainer.data.discovery import discover_images
from tests.fixtures_data import fashion_mnist_idx_dir, fashion_mnist_module
from tests.fixtures_pipeline import retrain_args

RETRAIN_PY_EXTENSIONS = ("JPEG", "JPG", "jpeg", "jpg", "png")
RETRAIN_PY_MAX_PER_CLASS = 2**27 - 1


def retrain_py_splits(image_dir: str, validation: float, testing: float) -> dict[str, str]:
    """{"<class folder>/<file>": split} as retrain.py's create_image_lists assigned them."""
    import tensorflow as tf

    splits = {}
    for folder in sorted(entry[0] for entry in tf.io.gfile.walk(image_dir))[1:]:
        dir_name = os.path.basename(folder.rstrip("/"))
        for extension in sorted(set(RETRAIN_PY_EXTENSIONS)):
            for file_name in tf.io.gfile.glob(os.path.join(image_dir, dir_name, "*." + extension)):
                hashed = hashlib.sha1(tf.compat.as_bytes(re.sub(r"_nohash_.*$", "", file_name)))
                percentage = ((int(hashed.hexdigest(), 16) % (RETRAIN_PY_MAX_PER_CLASS + 1))
                              * (100.0 / RETRAIN_PY_MAX_PER_CLASS))
                split = ("validation" if percentage < validation else
                         "testing" if percentage < validation + testing else "training")
                splits[f"{dir_name}/{os.path.basename(file_name)}"] = split
    return splits


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real images in retrain.py's shape: class folders of PNGs and JPEGs, one class's files
    grouped as `<leaf>_nohash_<n>` (several photos of one object share a split)."""
    root = tmp_path_factory.mktemp("compat")
    images = fashion_mnist_module().write_image_folder(fashion_mnist_idx_dir(), root / "source",
                                                       per_class=40)
    folder = root / "work" / "flower_photos"
    for index, name in enumerate(("Bag", "Sandal", "Ankle_boot")):
        (folder / name).mkdir(parents=True)
        for number, path in enumerate(sorted((images / name).glob("*.png"))):
            if index == 2:  # groups of 4 variants of a "leaf"
                target = folder / name / f"leaf{number // 4}_nohash_{number % 4}.png"
            elif number % 2:
                target = folder / name / f"{path.stem}.jpg"
            else:
                target = folder / name / path.name
            shutil.copyfile(path, target)  # a .jpg holding PNG bytes decodes all the same
    return root / "work"


@pytest.mark.parametrize("spelling", ["flower_photos", "./flower_photos", "flower_photos/",
                                      "flower_photos//", "ABSOLUTE"])
@pytest.mark.parametrize(("validation", "testing"), [(10, 10), (25, 15)])
def test_retrain_py_mode_matches_retrain_py_on_real_files(photos, monkeypatch, spelling,
                                                          validation, testing):
    monkeypatch.chdir(photos)
    image_dir = str(photos / "flower_photos") if spelling == "ABSOLUTE" else spelling
    expected = retrain_py_splits(image_dir, validation, testing)
    found = discover_images(image_dir, validation, testing, retrain_py_image_dir=image_dir)
    assert {image.relpath: image.split for image in found.images} == expected
    assert len(expected) == 120 and {"training", "validation", "testing"} <= set(expected.values())
    groups: dict[str, set[str]] = {}
    for relpath, split in expected.items():
        if "_nohash_" in relpath:
            groups.setdefault(relpath.split("_nohash_")[0], set()).add(split)
    assert len(groups) == 10 and all(len(splits) == 1 for splits in groups.values())


def test_the_trade_off_the_default_split_ignores_where_the_folder_is(photos, monkeypatch):
    """The default hashes the path below --image_dir: one split however the folder is named.
    retrain_py's follows the spelling, so typing ./flower_photos reshuffles it."""
    monkeypatch.chdir(photos)
    spellings = ["flower_photos", "./flower_photos", str(photos / "flower_photos")]

    def splits(spelling, compat):
        found = discover_images(spelling, 10, 10, retrain_py_image_dir=spelling if compat else None)
        return {image.relpath: image.split for image in found.images}

    default = [splits(spelling, compat=False) for spelling in spellings]
    compatible = [splits(spelling, compat=True) for spelling in spellings]
    assert default[0] == default[1] == default[2]
    assert compatible[0] != compatible[1] != compatible[2]
    assert all(split != default[0] for split in compatible)


def test_the_flag_reaches_the_split(photos, monkeypatch, tmp_path):
    monkeypatch.chdir(photos)
    args = retrain_args(tmp_path, "./flower_photos", "--split_compat", "retrain_py", "--json",
                        "--skip_audit")
    outcome = CliRunner().invoke(retrain, args)
    assert outcome.exit_code == 0, outcome.output
    counts = json.loads(outcome.stdout)["counts"]
    expected = retrain_py_splits("./flower_photos", 10, 10)
    for label, folder in (("bag", "Bag"), ("sandal", "Sandal"), ("ankle boot", "Ankle_boot")):
        in_class = [split for relpath, split in expected.items() if relpath.startswith(folder)]
        assert counts[label] == {split: in_class.count(split)
                                 for split in ("training", "validation", "testing")}
    assert json.loads(outcome.stdout)["flags"]["split_compat"] == "retrain_py"
