"""The audit's memory-saving paths find what the direct ones find, and leave the run's arrays
alone: the detectors run one after another on the stage's own vectors and thumbnails (no copies),
each reduced descriptor is scaled in place, and a signature set asked for every row is itself."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from retrainer.audit import duplicates, label_issues, lazy_rows, outliers
from retrainer.audit.neighbours import principal_components, unit_components, unit_rows
from retrainer.audit.run import _near_groups, find_problems
from retrainer.cache.bottlenecks import Bottlenecks
from retrainer.data.batches import content_digest, decode_signatures
from retrainer.data.discovery import discover_images
from retrainer.data.signatures import Signatures
from tests.fixtures_pipeline import FASHION_CLASSES, copy_classes


@st.composite
def matrices(draw) -> np.ndarray:
    """float32 [N, D]: N from 0 to 700 (below and above the principal axes' sample of 512, so
    both the Gram and the axes paths run), D from 1 to 80, some all-zero rows."""
    count = draw(st.sampled_from([0, 1, 2, 7, 60, 513, 700]))
    width = draw(st.integers(1, 80))
    seed = draw(st.integers(0, 2**16))
    matrix = np.random.default_rng(seed).standard_normal((count, width)).astype(np.float32)
    if count:
        matrix[draw(arrays(np.int64, 3, elements=st.integers(0, count - 1)))] = 0.0
    return matrix


@settings(max_examples=40, deadline=None)
@given(matrices(), st.sampled_from([1, 8, 32, 64]), st.booleans(), st.booleans())
def test_unit_components_equal_unit_rows_of_the_projection(matrix, dims, center, normalize):
    """The in-place scaling gives the same float32 values as a normalised copy, and never
    writes into the caller's array (D <= dims returns rows of the matrix itself)."""
    before = matrix.copy()
    expected = unit_rows(principal_components(matrix, dims, center, normalize))
    found = unit_components(matrix, dims, center, normalize)
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_array_equal(matrix, before)


def test_signatures_of_every_row_in_order_are_the_same_arrays():
    made = Signatures(np.arange(3 * 32 * 32, dtype=np.uint8).reshape(3, 32, 32),
                      np.array([5, 6, 7], np.uint64))
    assert made.take(np.arange(3)) is made
    reordered = made.take(np.array([2, 0, 1]))
    np.testing.assert_array_equal(reordered.hashes, [7, 5, 6])
    np.testing.assert_array_equal(reordered.thumbnails[0], made.thumbnails[2])
    assert len(made.take(np.array([1])).hashes) == 1


@pytest.fixture(scope="module")
def planted(fashion_mnist_dir, tmp_path_factory) -> tuple[Path, dict[str, object]]:
    """4 real Fashion-MNIST classes x 30, with a byte copy, a re-encoded JPEG copy, a resized
    copy and an unrelated photograph planted: (folder, {"exact": the byte copies' paths,
    "near": the near pairs, "photo": the photograph's path})."""
    import skimage.data

    root = copy_classes(fashion_mnist_dir, tmp_path_factory.mktemp("planted") / "images",
                        FASHION_CLASSES, 30)
    bag, dress = sorted((root / "Bag").iterdir()), sorted((root / "Dress").iterdir())
    shutil.copyfile(bag[0], root / "Bag" / "byte_copy.png")
    jpeg = io.BytesIO()
    Image.open(bag[1]).save(jpeg, "JPEG", quality=70)
    Image.open(io.BytesIO(jpeg.getvalue())).save(root / "Bag" / "reencoded.png")
    Image.open(dress[0]).resize((56, 56), Image.Resampling.BILINEAR).save(
        root / "Dress" / "resized.png")
    Image.fromarray(skimage.data.page()).convert("L").resize((28, 28)).save(
        root / "Sneaker" / "page.png")
    return root, {"exact": {f"Bag/{bag[0].name}", "Bag/byte_copy.png"},
                  "near": {frozenset({f"Bag/{bag[1].name}", "Bag/reencoded.png"}),
                           frozenset({f"Dress/{dress[0].name}", "Dress/resized.png"})},
                  "photo": "Sneaker/page.png"}


def test_audit_finds_what_each_detector_finds_on_copies(planted, tmp_path):
    """find_problems (detectors in sequence on the stage's arrays) against each detector called
    on private copies of them: the same findings, the stage's vectors and thumbnails unchanged,
    the planted copies and the photograph found. The vectors are the images' own thumbnails
    (real pixels), so the test needs no extractor."""
    root, truth = planted
    collection = discover_images(root)
    paths = [image.path for image in collection.images]
    signatures = decode_signatures(paths)
    vectors = signatures.thumbnails.reshape(len(paths), -1).astype(np.float32) / 255.0
    digests = tuple(content_digest(Path(path).read_bytes()) for path in paths)
    bottlenecks = Bottlenecks(vectors, np.ones(len(paths), bool), (), 0, len(paths), 0.0,
                              digests, signatures)
    saved_vectors, saved_thumbnails = vectors.copy(), signatures.thumbnails.copy()

    findings, cached = find_problems(collection, bottlenecks, tmp_path, seed=0)

    assert not cached
    np.testing.assert_array_equal(vectors, saved_vectors)
    np.testing.assert_array_equal(signatures.thumbnails, saved_thumbnails)
    labels = np.array([image.label_index for image in collection.images], np.int64)
    exact = duplicates.exact_groups(digests)
    pairs = duplicates.near_pairs(digests, saved_vectors.copy(), saved_thumbnails.copy(),
                                  signatures.hashes.copy())
    far = outliers.find_outliers(saved_vectors.copy(), labels)
    issues = label_issues.find_label_issues(
        label_issues.fit_out_of_fold(saved_vectors.copy(), labels, len(collection.labels), 0),
        labels)
    assert findings.exact == tuple(tuple(group) for group in exact)
    assert findings.near == tuple(_near_groups(len(paths), exact, pairs))
    assert findings.outliers == tuple((o.position, round(o.score, 2)) for o in far)
    assert findings.mislabeled == tuple((i.position, i.suggested, round(i.score, 4))
                                        for i in issues)
    relpath = [image.relpath for image in collection.images]
    found_near = {frozenset(relpath[p] for p in group) for group, _ in findings.near}
    assert truth["near"] <= found_near
    assert {relpath[p] for group in findings.exact for p in group} == truth["exact"]
    assert truth["photo"] in {relpath[p] for p, _ in findings.outliers}


def test_near_pairs_are_the_same_from_thumbnails_in_a_scratch_file(planted, tmp_path,
                                                                    monkeypatch):
    """At a million images the thumbnails live in a scratch file (`io.scratch`) and the wide
    descriptors are computed when rows are taken (`Described`, also the crop pass's after it
    ran): on real images with planted copies, the same near pairs as from arrays in memory."""
    from retrainer.io.scratch import ScratchRows

    root, _ = planted
    collection = discover_images(root)
    paths = collection.paths()
    signatures = decode_signatures(paths)
    vectors = signatures.thumbnails.reshape(len(paths), -1).astype(np.float32) / 255.0
    digests = [content_digest(Path(path).read_bytes()) for path in paths]
    digests[1] = digests[0]  # a byte copy: the scratch rows are then taken into another file
    expected = duplicates.near_pairs(digests, vectors, signatures.thumbnails, signatures.hashes)
    assert expected
    scratch = ScratchRows(signatures.thumbnails.shape, np.uint8, tmp_path)
    scratch[:] = signatures.thumbnails
    monkeypatch.setattr(lazy_rows, "WHOLE_DESCRIBED", 10)
    monkeypatch.setattr("retrainer.io.scratch.RESIDENT_BYTES", 8 * 4096)
    assert duplicates.near_pairs(digests, vectors, scratch, signatures.hashes) == expected
    assert list(tmp_path.iterdir()) == []  # unlinked at once: nothing left behind


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 300), st.integers(1, 6), st.integers(0, 2**16), st.sampled_from([1, 7, 64]))
def test_nearest_pairs_a_block_of_rows_at_a_time_are_every_kept_pair_once(count, limit, seed,
                                                                          rows):
    """The k-nearest graph's pairs, read a block of rows at a time into one key per pair, are
    the distinct (min, max) pairs of every row and kept partner, sorted: as read whole."""
    from retrainer.audit._nearest import Nearest, unique_pairs

    generator = np.random.default_rng(seed)
    nearest = Nearest(count, limit)
    for _ in range(3):
        firsts = generator.integers(0, count, 50)
        seconds = (firsts + generator.integers(1, count, 50)) % count
        nearest.add(firsts, seconds, generator.random(50).astype(np.float32))
    assert nearest.partners.dtype == np.int32
    owners = np.repeat(np.arange(count), limit)
    partners = nearest.partners.ravel().astype(np.int64)
    valid = partners >= 0
    expected = unique_pairs(np.minimum(owners[valid], partners[valid]),
                            np.maximum(owners[valid], partners[valid]))
    found = nearest.pairs(rows)
    assert all(np.array_equal(a, b) and a.dtype == np.int64 for a, b in zip(found, expected))
