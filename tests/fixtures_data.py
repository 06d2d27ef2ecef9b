"""Real small datasets and generated image folders for tests (owned by the data stage).

- `fashion_mnist_dir` / `fashion_mnist_holdout_dir`: real Fashion-MNIST images as class folders,
  built once per session by examples/fashion_mnist.py from the idx files (scripts/setup.sh fetches
  them; a missing file fails the test with the command to run, it never skips).
- `make_color_image_dir` / `color_image_dir`: tiny generated class folders for plumbing tests.
- `write_decode_corpus`: one file per awkward or broken input the decoder must handle.
- `make_messy_image_dir`: a class tree with everything discovery must skip or survive.
"""

from __future__ import annotations

import importlib.util
import io
import os
import struct
import zlib
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
FASHION_MNIST_ENV = "RETRAINER_FASHION_MNIST"
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
PRIMARY_COLORS = {"red": RED, "green": GREEN, "blue": BLUE}


# --- Fashion-MNIST -------------------------------------------------------------------------------

def fashion_mnist_idx_dir() -> Path:
    """The folder with the four idx .gz files: $RETRAINER_FASHION_MNIST or .cache/fashion-mnist."""
    folder = Path(os.environ.get(FASHION_MNIST_ENV, REPO_ROOT / ".cache" / "fashion-mnist"))
    module = fashion_mnist_module()
    missing = [name for names in module.IDX_FILES.values() for name in names
               if not (folder / name).is_file()]
    if missing:
        pytest.fail(
            f"Fashion-MNIST idx files missing in {folder}: {', '.join(missing)}. Run "
            f"`bash scripts/fetch_fashion_mnist.sh {folder}` (or set {FASHION_MNIST_ENV}).",
            pytrace=False,
        )
    return folder


def fashion_mnist_module() -> ModuleType:
    """examples/fashion_mnist.py, imported by path (examples/ is not a package)."""
    path = REPO_ROOT / "examples" / "fashion_mnist.py"
    spec = importlib.util.spec_from_file_location("retrainer_examples_fashion_mnist", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def fashion_mnist_dir(tmp_path_factory) -> Path:
    """Real images: 10 Fashion-MNIST classes x 25 (train subset), 28x28 grayscale PNG."""
    out = tmp_path_factory.mktemp("fashion_mnist") / "images"
    return fashion_mnist_module().write_image_folder(fashion_mnist_idx_dir(), out, per_class=25)


@pytest.fixture(scope="session")
def fashion_mnist_holdout_dir(tmp_path_factory) -> Path:
    """Held-out real images (t10k subset, never in `fashion_mnist_dir`): 10 classes x 2."""
    out = tmp_path_factory.mktemp("fashion_mnist_holdout") / "images"
    return fashion_mnist_module().write_image_folder(
        fashion_mnist_idx_dir(), out, per_class=2, subset="t10k"
    )


# --- Generated class folders ---------------------------------------------------------------------

def make_color_image_dir(
    root: Path,
    classes: dict[str, tuple[int, int, int]] = PRIMARY_COLORS,
    per_class: int = 6,
    size: tuple[int, int] = (32, 32),
    image_format: str = "png",
) -> Path:
    """Class folders of images dominated by each class's colour, every image slightly different.

    Each image is the class colour with a seeded pattern of darker stripes, so files (and content
    hashes) differ while the class stays obvious. Returns `root`.
    """
    height, width = size
    for class_index, (name, color) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(class_index)
        for index in range(per_class):
            pixels = np.empty((height, width, 3), np.uint8)
            pixels[:] = color
            stripe = rng.integers(0, height)
            pixels[stripe : stripe + max(1, height // 8)] //= 2
            pixels[:, index % width] = rng.integers(0, 256, 3, dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}_{index:03d}.{image_format}")
    return root


@pytest.fixture
def color_image_dir(tmp_path) -> Path:
    """Three classes (red, green, blue) x 6 generated 32x32 PNGs."""
    return make_color_image_dir(tmp_path / "colors")


# --- Bad and awkward inputs ----------------------------------------------------------------------

def encode(image: Image.Image, image_format: str, **options) -> bytes:
    """`image` saved to bytes in `image_format` (e.g. "PNG", "JPEG")."""
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def split_image(size: tuple[int, int], top: tuple, bottom: tuple, mode: str = "RGB") -> Image.Image:
    """An image (width, height) = `size` whose top half is `top` and bottom half `bottom`."""
    width, height = size
    image = Image.new(mode, (width, height), bottom)
    image.paste(Image.new(mode, (width, height // 2), top), (0, 0))
    return image


def png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny grayscale PNG whose header declares width x height: a decompression-bomb header.

    Only the header and a few bytes of pixel data are written, so the file is under 100 bytes
    whatever it declares; a decoder that trusted the header would try to allocate it all.
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def write_decode_corpus(folder: Path) -> dict[str, Path]:
    """Write one file per decoding case into `folder`; returns {case name: path}.

    Readable cases have known pixels (see each comment); unreadable ones are named for why.
    """
    folder.mkdir(parents=True, exist_ok=True)
    red_blue = split_image((64, 64), RED, BLUE)  # upright: top red, bottom blue
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))  # left half opaque red, right transparent
    rgba.paste(Image.new("RGBA", (16, 32), (*RED, 255)), (0, 0))
    palette = Image.new("P", (32, 32), 0)  # left half index 1 (red), right index 0 (transparent)
    palette.putpalette([0, 0, 0, *RED] + [0, 0, 0] * 254)
    palette.paste(1, (0, 0, 16, 32))
    la = Image.new("LA", (32, 32), (0, 0))  # left half opaque black, right transparent
    la.paste((0, 255), (0, 0, 16, 32))
    gradient16 = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    gradient_float = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    gif_frames = [Image.new("P", (32, 32), 0), Image.new("P", (32, 32), 1)]
    for frame in gif_frames:
        frame.putpalette([*RED, *BLUE] + [0, 0, 0] * 254)
    webp_frames = [Image.new("RGB", (32, 32), RED), Image.new("RGB", (32, 32), BLUE)]
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: stored pixels must be rotated 90 degrees clockwise to show
    png = encode(red_blue, "PNG")
    jpeg = encode(red_blue, "JPEG", quality=95)

    contents = {
        "rgb.jpg": jpeg,
        "rgb.png": png,
        "png_named.jpg": png,  # content decides the format
        "upper_case.JPG": jpeg,
        "grey.png": encode(split_image((64, 64), 255, 0, "L"), "PNG"),  # top white, bottom black
        "bilevel.bmp": encode(split_image((64, 64), 1, 0, "1"), "BMP"),
        "sixteen_bit.png": encode(Image.fromarray(gradient16), "PNG"),  # 0..65535 left to right
        "float.tiff": encode(Image.fromarray(gradient_float), "TIFF"),  # 0..1 left to right
        "cmyk.jpg": encode(red_blue.convert("CMYK"), "JPEG", quality=95),
        "rgba.png": encode(rgba, "PNG"),
        "palette_transparent.png": encode(palette, "PNG", transparency=0),
        "la.png": encode(la, "PNG"),
        "animated.gif": encode(gif_frames[0], "GIF", save_all=True,
                               append_images=gif_frames[1:], duration=100, loop=0),
        "animated.webp": encode(webp_frames[0], "WEBP", save_all=True,
                                append_images=webp_frames[1:], duration=100, lossless=True),
        "exif_rotated.jpg": encode(red_blue.transpose(Image.Transpose.ROTATE_90), "JPEG",
                                   quality=95, exif=exif.tobytes()),
        "empty.jpg": b"",
        "empty.png": b"",
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "truncated.png": png[: len(png) // 2],
        "text.jpg": b"These are my notes about roses.\nNot a picture.\n",
        "html.jpg": b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n",
        "binary_junk.png": bytes(range(256)) * 4,
        "._IMG_0001.jpg": b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + b"\0" * 64,
        "bomb.png": png_with_declared_size(100_000, 100_000),  # over Pillow's own hard limit
        "bomb_moderate.png": png_with_declared_size(10_000, 10_000),  # 100 M px: over ours
    }
    paths = {}
    for name, data in contents.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    return paths


def make_messy_image_dir(root: Path) -> Path:
    """A class tree with every kind of entry discovery must use, skip or survive. Returns `root`.

    Used (12 images): roses/{a.jpg, B.JPG, c.Png, sub/deep/d.jpeg, link_outside.jpg (symlink to a
    file outside root), png_named.jpg (PNG content)}; "Wild Tulips Ü"/{"tulip 1.jpg",
    "çà.png"}; "玫瑰"/{x.webp, y.gif, z.bmp, w.tiff}.
    Skipped: see the `ignored` reasons asserted in tests/test_discovery.py.
    """
    outside = root.parent / f"{root.name}_outside"
    outside.mkdir(parents=True, exist_ok=True)
    tiny = Image.new("RGB", (8, 8), RED)
    (outside / "e.jpg").write_bytes(encode(tiny, "JPEG"))

    files = {
        "roses/a.jpg": encode(tiny, "JPEG"),
        "roses/B.JPG": encode(Image.new("RGB", (8, 8), GREEN), "JPEG"),
        "roses/c.Png": encode(tiny, "PNG"),
        "roses/png_named.jpg": encode(Image.new("RGB", (8, 8), BLUE), "PNG"),
        "roses/sub/deep/d.jpeg": encode(tiny, "JPEG"),
        "roses/notes.txt": b"picked in June\n",
        "roses/a.jpg.xmp": b"<x:xmpmeta/>",
        "roses/song.mp3": b"ID3",
        "roses/._a.jpg": b"\x00\x05\x16\x07",
        "roses/.DS_Store": b"\0\0\0\1Bud1",
        "roses/.hidden.jpg": encode(tiny, "JPEG"),
        "roses/.thumbnails/t.jpg": encode(tiny, "JPEG"),
        "Wild Tulips Ü/tulip 1.jpg": encode(Image.new("RGB", (8, 8), (200, 100, 0)), "JPEG"),
        "Wild Tulips Ü/çà.png": encode(Image.new("RGB", (8, 8), (10, 20, 30)), "PNG"),
        "玫瑰/x.webp": encode(Image.new("RGB", (8, 8), (1, 2, 3)), "WEBP"),
        "玫瑰/y.gif": encode(Image.new("RGB", (8, 8), (4, 5, 6)), "GIF"),
        "玫瑰/z.bmp": encode(Image.new("RGB", (8, 8), (7, 8, 9)), "BMP"),
        "玫瑰/w.tiff": encode(Image.new("RGB", (8, 8), (9, 9, 9)), "TIFF"),
        "empty class/readme.md": b"nothing here yet\n",
        ".hidden_class/h.jpg": encode(tiny, "JPEG"),
        "__MACOSX/roses/._a.jpg": b"\x00\x05\x16\x07",
        "loose.jpg": encode(tiny, "JPEG"),
        ".DS_Store": b"\0\0\0\1Bud1",
    }
    for relpath, data in files.items():
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "truly empty").mkdir()
    os.symlink("a.jpg", root / "roses" / "link_same.jpg")  # same file twice: counted once
    os.symlink(outside / "e.jpg", root / "roses" / "link_outside.jpg")
    os.symlink("missing.jpg", root / "roses" / "broken.jpg")
    os.symlink(".", root / "roses" / "sub" / "loop")  # a symlink loop: never followed
    os.symlink("..", root / "roses" / "up")
    os.symlink(".", root / "self_link")  # class-folder symlink to root itself: skipped
    return root
