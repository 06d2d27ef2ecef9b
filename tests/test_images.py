"""The decode stage: every kind of image file -> uint8 RGB [H, W, 3], or a short reason why not."""

from __future__ import annotations

import gzip
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import skimage.data
from PIL import Image

from retrainer.data import decoding as images
from retrainer.data.decoding import UnreadableImageError, decode_image, load_image
from retrainer.errors import RetrainerError
from tests.fixtures_data import BLUE, RED, encode, fashion_mnist_idx_dir, write_decode_corpus

WHITE = (255, 255, 255)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_decode_corpus(tmp_path_factory.mktemp("decode_corpus"))


def assert_color(pixels: np.ndarray, expected, tolerance: int = 3) -> None:
    difference = np.abs(pixels.astype(int) - np.asarray(expected)).max()
    assert difference <= tolerance, f"expected {expected}, got {pixels.reshape(-1, 3)[:3]}"


@pytest.mark.parametrize(
    "name",
    ["rgb.jpg", "rgb.png", "png_named.jpg", "upper_case.JPG", "cmyk.jpg", "exif_rotated.jpg"],
)
def test_top_red_bottom_blue_images_decode_upright(corpus, name):
    pixels = load_image(corpus[name], (64, 64))
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    assert_color(pixels[:28], RED)
    assert_color(pixels[36:], BLUE)


def test_exif_orientation_matters(corpus):
    stored = np.asarray(Image.open(corpus["exif_rotated.jpg"]).convert("RGB"))
    assert_color(stored[:, :28], RED)  # the stored pixels are sideways: red on the left
    assert_color(stored[:, 36:], BLUE)


def test_result_is_height_by_width(corpus):
    pixels = load_image(corpus["rgb.png"], (20, 40))
    assert pixels.shape == (20, 40, 3)
    assert_color(pixels[:8], RED)
    assert_color(pixels[12:], BLUE)


def test_native_size_png_is_pixel_exact():
    cat = skimage.data.chelsea()  # uint8 [300, 451, 3]
    path_data = encode(Image.fromarray(cat), "PNG", compress_level=1)
    np.testing.assert_array_equal(decode_image(path_data, cat.shape[:2], "cat.png"), cat)


def test_real_photo_resizes_like_a_full_decode(tmp_path):
    coffee = skimage.data.coffee()  # uint8 [400, 600, 3]
    path = tmp_path / "coffee.jpg"
    path.write_bytes(encode(Image.fromarray(coffee), "JPEG", quality=95))
    fast = load_image(path, (48, 48))  # JPEG decoded at 1/8 scale
    full = np.asarray(Image.open(path).convert("RGB").resize((48, 48), Image.Resampling.BILINEAR))
    assert np.abs(fast.astype(int) - full).mean() < 4


@pytest.mark.parametrize(
    ("name", "top", "bottom"),
    [("grey.png", WHITE, (0, 0, 0)), ("bilevel.bmp", WHITE, (0, 0, 0))],
)
def test_grayscale_and_bilevel_become_rgb(corpus, name, top, bottom):
    pixels = load_image(corpus[name], (64, 64))
    assert_color(pixels[:28], top, 0)
    assert_color(pixels[36:], bottom, 0)


@pytest.mark.parametrize("name", ["sixteen_bit.png", "float.tiff"])
def test_high_bit_depth_is_scaled_to_eight_bits(corpus, name):
    pixels = load_image(corpus[name], (64, 64))
    expected = np.round(np.linspace(0, 255, 64)).astype(int)  # 0..65535 or 0..1, left to right
    assert np.abs(pixels[10, :, 0].astype(int) - expected).max() <= 1
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


@pytest.mark.parametrize(
    ("name", "opaque"),
    [("rgba.png", RED), ("palette_transparent.png", RED), ("la.png", (0, 0, 0))],
)
def test_transparency_is_composited_on_white(corpus, name, opaque):
    pixels = load_image(corpus[name], (32, 32))
    assert_color(pixels[:, :14], opaque, 0)
    assert_color(pixels[:, 18:], WHITE, 0)
    assert images.ALPHA_BACKGROUND == WHITE


@pytest.mark.parametrize("name", ["animated.gif", "animated.webp"])
def test_animations_give_their_first_frame(corpus, name):
    assert_color(load_image(corpus[name], (16, 16)), RED, 0)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("empty.jpg", "empty file (0 bytes)"),
        ("empty.png", "empty file (0 bytes)"),
        ("text.jpg", "not an image (a text file)"),
        ("html.jpg", "not an image (an HTML page)"),
        ("binary_junk.png", "not an image (unrecognised file format)"),
        ("._IMG_0001.jpg", "not an image (unrecognised file format)"),
    ],
)
def test_non_images_are_unreadable_with_a_reason(corpus, name, reason):
    with pytest.raises(UnreadableImageError) as caught:
        load_image(corpus[name], (8, 8))
    assert caught.value.reason == reason
    assert caught.value.path == str(corpus[name])
    assert str(caught.value) == f"{corpus[name]}: {reason}"


@pytest.mark.parametrize("name", ["truncated.jpg", "truncated.png"])
def test_truncated_images_are_unreadable(corpus, name):
    with pytest.raises(UnreadableImageError, match="truncated or corrupt image data"):
        load_image(corpus[name], (8, 8))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("bomb.png", "too large to decode safely (Image size (10000000000 pixels) exceeds limit"),
        ("bomb_moderate.png",
         "too large to decode safely: 10000x10000 = 100.0 M pixels (limit 89.5 M); downscale it"),
    ],
)
def test_decompression_bombs_are_refused_from_the_header(corpus, name, reason):
    assert corpus[name].stat().st_size < 100  # yet it declares 100 M or 10 G pixels
    start = time.perf_counter()
    with pytest.raises(UnreadableImageError) as caught:
        load_image(corpus[name], (224, 224))
    assert time.perf_counter() - start < 0.5
    assert caught.value.reason.startswith(reason)


def test_pixel_limit_counts_pixels_actually_decoded(tmp_path, monkeypatch):
    # A JPEG is shrunk in the decoder first, so it may declare more than the limit; a PNG may not.
    photo = Image.fromarray(skimage.data.chelsea()).resize((1600, 1600))
    (tmp_path / "big.jpg").write_bytes(encode(photo, "JPEG"))
    (tmp_path / "big.png").write_bytes(encode(photo, "PNG", compress_level=1))
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 1_000_000)
    assert load_image(tmp_path / "big.jpg", (100, 100)).shape == (100, 100, 3)  # 200x200 decoded
    with pytest.raises(UnreadableImageError, match=r"1600x1600 = 2\.6 M pixels \(limit 1\.0 M\)"):
        load_image(tmp_path / "big.png", (100, 100))
    with pytest.raises(UnreadableImageError, match=r"1600x1600"):
        load_image(tmp_path / "big.jpg", (1000, 1000))  # too big a target: no shrinking


def test_missing_file_and_folder_are_unreadable(tmp_path):
    with pytest.raises(UnreadableImageError, match=r"cannot read file \(No such file or directory"):
        load_image(tmp_path / "missing.jpg", (8, 8))
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(UnreadableImageError, match="cannot read file"):
        load_image(tmp_path / "folder.jpg", (8, 8))


def test_unreadable_image_error_is_not_a_retrainer_error():
    assert not issubclass(UnreadableImageError, RetrainerError)


def test_decode_image_matches_load_image(corpus):
    for name in ("rgb.jpg", "cmyk.jpg", "exif_rotated.jpg", "la.png", "animated.gif"):
        np.testing.assert_array_equal(
            decode_image(corpus[name].read_bytes(), (24, 24), name),
            load_image(corpus[name], (24, 24)),
        )
    with pytest.raises(UnreadableImageError) as caught:
        decode_image(b"", (8, 8), "<stdin>")
    assert str(caught.value) == "<stdin>: empty file (0 bytes)"


@pytest.mark.parametrize("name", ["rgb.jpg", "grey.png", "la.png", "rgba.png", "cmyk.jpg",
                                  "exif_rotated.jpg"])
def test_decoding_into_a_batch_row_gives_the_same_pixels(corpus, name):
    batch = np.full((3, 24, 20, 3), 7, np.uint8)
    written = decode_image(corpus[name].read_bytes(), (24, 20), name, out=batch[1])
    assert written is batch[1] or np.shares_memory(written, batch)
    np.testing.assert_array_equal(batch[1], load_image(corpus[name], (24, 20)))
    assert (batch[0] == 7).all() and (batch[2] == 7).all()
    with pytest.raises(UnreadableImageError):
        decode_image(b"not a picture", (24, 20), "notes.png", out=batch[2])
    assert (batch[2] == 7).all()  # an unreadable image leaves the row as it was


def test_grey_images_resize_as_their_rgb_conversion_does(fashion_mnist_dir):
    """The one-channel shortcut (resize, then merge thrice) is pixel-identical to Pillow's RGB."""
    for path in sorted(fashion_mnist_dir.glob("*/*.png"))[::25]:
        with Image.open(path) as image:
            assert image.mode == "L"
            reference = np.asarray(image.convert("RGB").resize((224, 224), images.RESAMPLE))
        np.testing.assert_array_equal(load_image(path, (224, 224)), reference)


def test_bad_size_is_a_programming_error(corpus):
    with pytest.raises(ValueError, match="size must be \\(height, width\\) with both >= 1"):
        load_image(corpus["rgb.png"], (0, 10))


def test_fashion_mnist_pngs_keep_their_exact_pixels(fashion_mnist_dir):
    # The idx file's first T-shirt/top image (label 0) vs. the PNG written and decoded from it.
    idx_dir = fashion_mnist_idx_dir()
    with gzip.open(idx_dir / "train-labels-idx1-ubyte.gz") as stream:
        labels = np.frombuffer(stream.read()[8:], np.uint8)
    index = int(np.flatnonzero(labels == 0)[0])
    with gzip.open(idx_dir / "train-images-idx3-ubyte.gz") as stream:
        raw = np.frombuffer(stream.read(16 + (index + 1) * 784)[16:], np.uint8)[-784:]
    pixels = load_image(fashion_mnist_dir / "T-shirt_top" / f"train_{index:05d}.png", (28, 28))
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel], raw.reshape(28, 28))


def test_parallel_threads_decode_the_same_pixels(corpus, fashion_mnist_dir):
    paths = sorted(fashion_mnist_dir.glob("*/*.png"))[:60] + [
        corpus[name] for name in ("rgb.jpg", "cmyk.jpg", "exif_rotated.jpg", "rgba.png")
    ]
    sequential = [load_image(path, (64, 48)) for path in paths]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda path: load_image(path, (64, 48)), paths))
    for one, other in zip(sequential, parallel):
        np.testing.assert_array_equal(one, other)


def test_decode_files_gives_each_file_its_own_pixels_in_order(corpus, fashion_mnist_dir):
    """`decode_files` (the export report's, int8 calibration's and test-time augmentation's
    decoder): row i is file i as `load_image` decodes it, across batches; unusable files are black
    rows marked not decoded, and never stop the others."""
    from retrainer.data.batches import DECODE_BATCH, decode_files

    usable = ["rgb.jpg", "cmyk.jpg", "rgba.png", "grey.png", "exif_rotated.jpg", "animated.gif"]
    unusable = ["empty.jpg", "truncated.png", "text.jpg"]
    fashion = sorted(fashion_mnist_dir.rglob("*.png"))[:DECODE_BATCH]
    paths = [corpus[name] for name in [*usable, *unusable]] * 3 + fashion
    size = (24, 40)
    pixels, ok = decode_files(paths, size)
    assert pixels.shape == (len(paths), *size, 3) and pixels.dtype == np.uint8
    for row, path in enumerate(paths):
        try:
            expected = load_image(path, size)
        except UnreadableImageError:
            assert not ok[row] and not pixels[row].any(), path
        else:
            assert ok[row] and np.array_equal(pixels[row], expected), path
    assert ok.sum() == 3 * len(usable) + len(fashion)
    empty_pixels, empty_ok = decode_files([], size)
    assert empty_pixels.shape == (0, *size, 3) and empty_ok.shape == (0,)
