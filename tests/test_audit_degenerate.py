"""The audit on the datasets users bring, not Fashion-MNIST: real clipart with alpha, small classes,
copies that every cheaper test already settles (so the shift and zoom tests get no pairs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from retrainer.audit import duplicates
from retrainer.audit.signatures import signature_of_pixels
from retrainer.cli.retrain import main
from retrainer.extractors import DEFAULT_EXTRACTOR
from tests.fixtures_photos import PHOTOS, photo, write_clipart_dir
from tests.fixtures_pipeline import retrain_args


def test_shift_and_zoom_scores_of_no_pairs_are_empty():
    none = np.zeros((0, 32, 32), np.uint8)
    for scores in (*duplicates.shift_scores(none, none), *duplicates.zoom_scores(none, none)):
        assert scores.shape == (0,)


def test_near_pairs_when_every_candidate_is_settled_by_its_pixels():
    """A re-saved copy among unrelated photos: the one candidate pair matches by thumbnail and
    hash, so none is left for the shift test (which once crashed on its empty selection)."""
    pictures = [np.asarray(photo(name).resize((64, 64))) for name in PHOTOS]
    thumbnails, hashes = map(np.array, zip(*(signature_of_pixels(p) for p in pictures)))
    vectors = np.random.default_rng(0).normal(size=(len(pictures), 64)).astype(np.float32)
    copy = len(pictures)  # the first picture again, other bytes
    thumbnails = np.concatenate([thumbnails, thumbnails[:1]])
    hashes = np.concatenate([hashes, hashes[:1]])
    vectors = np.concatenate([vectors, vectors[:1]])
    digests = [f"{index:064x}" for index in range(len(vectors))]
    pairs = duplicates.near_pairs(digests, vectors, thumbnails, hashes)
    assert [(pair.first, pair.second) for pair in pairs] == [(0, copy)]


def test_default_run_on_clipart_with_a_resaved_copy(tmp_path: Path):
    """RGBA clipart cut from real photos, classes of 4, one image saved again (other bytes, same
    pixels), a text and a sound file in each class: default extractor and precision, exit 0."""
    root = write_clipart_dir(tmp_path / "clipart", per_class=4)
    original = root / "icons_b" / "icon_00.png"
    Image.open(original).save(root / "icons_b" / "icon_00_resaved.png", compress_level=1)
    result = CliRunner().invoke(
        main, [*retrain_args(tmp_path, root, extractor=DEFAULT_EXTRACTOR, steps=20), "--json"])
    assert result.exit_code == 0, result.stderr
    near = json.loads(result.stdout)["audit"]["near_duplicates"]
    assert [sorted(group["paths"]) for group in near] == [
        ["icons_b/icon_00.png", "icons_b/icon_00_resaved.png"]]
