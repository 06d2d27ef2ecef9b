"""The audit on the datasets users bring, not Fashion-MNIST: real clipart with alpha, small classes,
copies that every cheaper test already settles (so the shift and zoom tests get no pairs); and
each detector on degenerate arrays (0, 1 or 2 rows, all rows equal, zero variance, one class)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from retrainer.audit import duplicates
from retrainer.audit.balance import balance_warnings
from retrainer.cli.retrain import main
from retrainer.config import DEFAULT_EXTRACTOR
from retrainer.data.signatures import signature_of_pixels
from retrainer.data.split import SPLITS
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


# --- every detector on degenerate arrays (Hypothesis) -------------------------------------------

KINDS = ("random", "equal_rows", "zero", "constant_columns", "two_values", "huge", "tiny")


def _matrix(kind: str, rows: int, columns: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [rows, columns] of one degenerate kind (zero variance, all rows equal, ...)."""
    if kind == "random":
        return rng.normal(size=(rows, columns)).astype(np.float32)
    if kind == "equal_rows":
        return np.repeat(rng.normal(size=(1, columns)), rows, axis=0).astype(np.float32)
    if kind == "zero":
        return np.zeros((rows, columns), np.float32)
    if kind == "constant_columns":
        return np.full((rows, columns), 0.5, np.float32)
    if kind == "two_values":
        return rng.integers(0, 2, (rows, columns)).astype(np.float32)
    if kind == "huge":  # a badly scaled extractor's vectors (squares stay in float32's range)
        return (rng.normal(size=(rows, columns)) * 1e15).astype(np.float32)
    return (rng.normal(size=(rows, columns)) * 1e-30).astype(np.float32)


@st.composite
def degenerate_sets(draw):
    """(digests, vectors float32 [N, D], thumbnails uint8 [N, 32, 32], hashes uint64 [N], labels
    int64 [N], classes): 0, 1, 2 or more rows, equal rows, zero variance, one class, copies."""
    rows = draw(st.one_of(st.sampled_from((0, 1, 2, 3)), st.integers(0, 40)))
    columns = draw(st.sampled_from((1, 2, 8, 64, 200)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    vectors = _matrix(draw(st.sampled_from(KINDS)), rows, columns, rng)
    pixels = _matrix(draw(st.sampled_from(KINDS[:5])), rows, 32 * 32, rng)
    pixels = pixels - pixels.min(initial=0.0)
    thumbnails = np.clip(pixels / max(float(pixels.max(initial=0.0)), 1e-6) * 255, 0, 255)
    thumbnails = thumbnails.astype(np.uint8).reshape(rows, 32, 32)
    hashes = draw(st.sampled_from(("zero", "random"))) == "random"
    hashes = (rng.integers(0, 2**63, rows, dtype=np.uint64) if hashes
              else np.zeros(rows, np.uint64))
    copies = rng.integers(0, 3, rows)  # a few files share a digest (byte copies)
    digests = [f"{index if copy else index // 2:064x}" for index, copy in enumerate(copies)]
    classes = draw(st.integers(1, 4))
    labels = (np.zeros(rows, np.int64) if draw(st.booleans())
              else rng.integers(0, classes, rows).astype(np.int64))
    return digests, vectors, thumbnails, hashes, labels, classes


DETECTOR_SETTINGS = settings(max_examples=15, deadline=None, derandomize=True, database=None)
# A NumPy warning on stderr is noise to a user (and often a wrong number): none is expected.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


@DETECTOR_SETTINGS
@given(degenerate_sets())
def test_duplicate_detectors_on_degenerate_arrays(data):
    digests, vectors, thumbnails, hashes, _, _ = data
    groups = duplicates.exact_groups(digests)
    assert all(len(group) > 1 and len({digests[p] for p in group}) == 1 for group in groups)
    pairs = duplicates.near_pairs(digests, vectors, thumbnails, hashes)
    for pair in pairs:
        assert 0 <= pair.first < pair.second < len(digests)
        assert digests[pair.first] != digests[pair.second]
        assert 0.0 <= pair.similarity <= 1.0
    assert len({(pair.first, pair.second) for pair in pairs}) == len(pairs)


@DETECTOR_SETTINGS
@given(degenerate_sets())
def test_label_and_outlier_detectors_on_degenerate_arrays(data):
    from retrainer.audit import label_issues, outliers

    _, vectors, _, _, labels, classes = data
    probabilities = label_issues.out_of_fold_probabilities(vectors, labels, classes)
    assert probabilities.shape == (len(labels), classes)
    assert np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    for issue in label_issues.find_label_issues(probabilities, labels):
        assert issue.suggested != labels[issue.position] and 0.0 <= issue.score <= 1.0
    for outlier in outliers.find_outliers(vectors, labels):
        assert 0 <= outlier.position < len(labels) and np.isfinite(outlier.score)


@DETECTOR_SETTINGS
@given(st.dictionaries(st.text(min_size=1, max_size=5),
                       st.fixed_dictionaries({split: st.integers(0, 50) for split in SPLITS}),
                       min_size=1, max_size=6),
       st.sampled_from((0.0, 10.0, 100.0)), st.sampled_from((0.0, 10.0, 100.0)))
def test_balance_warnings_on_degenerate_counts(counts, validation, testing):
    for warning in balance_warnings(counts, validation, testing):
        assert warning.endswith(".")


def test_balance_warning_counts_one_image_in_the_singular():
    counts = {"one": {split: int(split == SPLITS[0]) for split in SPLITS},
              "many": dict.fromkeys(SPLITS, 20)}
    assert balance_warnings(counts, 0.0, 0.0) == [
        "Class 'one' has 1 image, under 1/5 of 'many' (60): it will be predicted less reliably; "
        "add images of it."]


def test_label_issues_in_row_chunks_are_the_same(monkeypatch):
    """The out-of-fold model sliced a few rows at a time (as a million images of 1,000 classes
    are, never holding [N, C] probabilities) finds the same issues as the whole array: real
    Fashion-MNIST pixels with a few labels flipped."""
    from retrainer.audit import label_issues
    from tests.fixtures_data import fashion_mnist_idx_dir, fashion_mnist_module

    module = fashion_mnist_module()
    images_path, labels_path = (fashion_mnist_idx_dir() / name
                                for name in module.IDX_FILES["train"])
    labels = module.read_labels(labels_path)[:600].astype(np.int64)
    vectors = (module.read_images(images_path, 600).reshape(600, -1) / 255.0).astype(np.float32)
    flipped = np.arange(0, 600, 60)
    labels[flipped] = (labels[flipped] + 5) % 10
    model = label_issues.fit_out_of_fold(vectors, labels, 10)
    whole = label_issues.find_label_issues(model[:], labels)
    monkeypatch.setattr(label_issues, "CHUNK_ROWS", 64)
    chunked = label_issues.find_label_issues(model, labels)
    assert [(issue.position, issue.suggested) for issue in chunked] == [
        (issue.position, issue.suggested) for issue in whole]
    assert [issue.score for issue in chunked] == pytest.approx([issue.score for issue in whole],
                                                               rel=1e-6)
    assert {issue.position for issue in whole} & set(flipped.tolist())
    # float32 probabilities; a slice's row count picks the matmul kernel, so the last bits vary
    np.testing.assert_allclose(model[100:164], model[:][100:164], rtol=1e-5, atol=1e-7)
