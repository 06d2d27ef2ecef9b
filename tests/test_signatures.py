"""The audit's signatures come from the bottleneck stage's own decode: each image decoded once."""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrainer.audit.run import find_problems
from retrainer.cache.bottlenecks import compute_bottlenecks
from retrainer.cache.signatures import SignatureCache
from retrainer.data import batches
from retrainer.data.batches import decode_signatures
from retrainer.data.decoding import decode_image, load_image
from retrainer.data.discovery import discover_images
from retrainer.data.signatures import DECODE_SIZE, Signatures, signature_of_pixels
from tests.fixtures_pipeline import copy_classes

ORIGINAL = "Bag/original.png"


@pytest.fixture
def fashion(fashion_mnist_dir: Path, tmp_path: Path) -> Path:
    """Three real Fashion-MNIST classes of 8, one image re-saved as a JPEG (a near copy)."""
    root = copy_classes(fashion_mnist_dir, tmp_path / "images", ("Bag", "Trouser", "Sneaker"), 8)
    sorted((root / "Bag").iterdir())[0].rename(root / ORIGINAL)
    Image.open(root / ORIGINAL).save(root / "Bag" / "copy.jpg", quality=90)
    return root


def counting_decodes(monkeypatch) -> list:
    """Every file decode_image is asked to decode by the batch readers, from now on."""
    seen: list = []

    def counted(data, size, source="<bytes>", out=None, thumbnail=None):
        seen.append(source)
        return decode_image(data, size, source, out, thumbnail)

    monkeypatch.setattr(batches, "decode_image", counted)
    return seen


def test_png_thumbnail_is_the_one_a_separate_decode_gives(fashion_mnist_dir):
    """Same pixels as decoding the file at the signature's size on its own (so the thresholds
    measured that way hold), made in the pass that decodes the extractor's pixels."""
    path = sorted(fashion_mnist_dir.glob("Bag/*"))[0]
    thumbnail = np.zeros((*DECODE_SIZE, 3), np.uint8)
    pixels = decode_image(path.read_bytes(), (224, 224), path, thumbnail=thumbnail)
    assert (pixels == load_image(path, (224, 224))).all()  # the extractor's pixels unchanged
    assert (thumbnail == load_image(path, DECODE_SIZE)).all()


def test_jpeg_thumbnail_comes_from_the_extractors_dct_scaled_decode():
    """A 12 MP-like JPEG: the thumbnail is made from the decode the extractor's pixels come from
    (libjpeg's 1/8 scale) and stays close to a full-size decode's."""
    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 255, 2000, dtype=np.float32)
    picture = np.stack([np.add.outer(gradient[:1500] / 2, gradient / 2)] * 3, axis=-1)
    noisy = np.clip(picture + rng.normal(0, 4, picture.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, "JPEG", quality=90)
    thumbnail = np.zeros((*DECODE_SIZE, 3), np.uint8)
    decode_image(buffer.getvalue(), (224, 224), thumbnail=thumbnail)
    full = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB").resize(
        DECODE_SIZE, Image.Resampling.BILINEAR)
    assert np.abs(thumbnail.astype(int) - np.asarray(full, int)).max() <= 3


def test_stage_decodes_each_image_once_and_the_audit_none(fashion, tmp_path, tiny_extractor,
                                                         monkeypatch):
    collection = discover_images(fashion, 0, 0)
    paths = [image.path for image in collection.images]
    seen = counting_decodes(monkeypatch)
    result = compute_bottlenecks(paths, tiny_extractor, tmp_path / "cache", signatures=True)
    assert sorted(map(str, seen)) == sorted(map(str, paths))  # each once
    expected = decode_signatures(paths)
    assert (result.signatures.thumbnails == expected.thumbnails).all()
    assert (result.signatures.hashes == expected.hashes).all()
    seen.clear()
    shutil.rmtree(fashion)  # the audit cannot open a file now
    findings, cached = find_problems(collection, result, tmp_path / "cache", 0)
    assert not cached and not seen
    groups = [{collection.images[p].relpath for p in group} for group, _ in findings.near]
    assert {ORIGINAL, "Bag/copy.jpg"} in groups


def test_cached_vectors_get_their_signatures_decoded_once_then_cached(fashion, tmp_path,
                                                                      tiny_extractor,
                                                                      monkeypatch):
    """Vectors from a run without the audit (or from retrain-extract): the next run with the
    audit decodes each image once for its signature, and the one after decodes nothing."""
    paths = sorted(fashion.glob("*/*"))
    compute_bottlenecks(paths, tiny_extractor, tmp_path / "cache")  # vectors only
    seen = counting_decodes(monkeypatch)
    second = compute_bottlenecks(paths, tiny_extractor, tmp_path / "cache", signatures=True)
    assert second.reused == len(paths) and len(seen) == len(paths)
    seen.clear()
    third = compute_bottlenecks(paths, tiny_extractor, tmp_path / "cache", signatures=True)
    assert not seen
    assert (third.signatures.thumbnails == second.signatures.thumbnails).all()
    assert (third.signatures.hashes == second.signatures.hashes).all()


def test_signature_cache_ignores_a_truncated_shard(tmp_path, caplog):
    cache = SignatureCache(tmp_path, (224, 224))
    digests = ["ab" + "1" * 62, "ab" + "2" * 62]
    pixels = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), np.uint8)
    made = [signature_of_pixels(row) for row in pixels]
    signatures = Signatures(np.stack([m[0] for m in made]), np.array([m[1] for m in made]))
    cache.store(digests, signatures)
    found, known = cache.lookup(digests)
    assert known.all() and (found.thumbnails == signatures.thumbnails).all()
    shard = next(cache.directory.glob("ab.bin"))
    shard.write_bytes(shard.read_bytes()[:-5])
    # The level is set here: an earlier in-process CLI run (--quiet) may have raised it.
    with caplog.at_level(logging.WARNING, logger="retrainer.cache.signatures"):
        _, known = cache.lookup(digests)
    assert not known.any()
    assert "truncated" in caplog.text


def test_signature_cache_finds_digests_that_end_in_zero_bytes(tmp_path):
    """One SHA-256 in 256 ends in a 00 byte, which a fixed-size bytes field drops on reading:
    such an image was decoded again on every warm rerun."""
    cache = SignatureCache(tmp_path, (224, 224))
    digests = ["cd" + "7" * 58 + "0000", "cd" + "00" * 31, "cd" + "7" * 62]
    pixels = np.random.default_rng(2).integers(0, 256, (3, 64, 64, 3), np.uint8)
    made = [signature_of_pixels(row) for row in pixels]
    signatures = Signatures(np.stack([m[0] for m in made]), np.array([m[1] for m in made]))
    cache.store(digests, signatures)
    found, known = cache.lookup(digests)
    assert known.all()
    assert (found.thumbnails == signatures.thumbnails).all()
    assert (found.hashes == signatures.hashes).all()
