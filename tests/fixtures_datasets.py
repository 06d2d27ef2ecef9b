"""Drawn datasets for the property tests of the whole pipeline (tests/test_properties_pipeline.py).

A `DatasetPlan` is plain data that Hypothesis draws and shrinks: class folders (odd names, nested
sub-folders, empty, of 1, 2, 3 ... 40 images), each file made from a real picture (scikit-image's
photographs and Fashion-MNIST) in some mode and format, a constant colour, a 1x1 or a 6000x4000
picture, or a byte or near copy (re-encoded, resized, cropped, shifted, brightened, flipped) of an
earlier file, in the same class or another; whole classes copied under a second label; the split
percentages and the modes (distortions, fine-tuning, exports, gates). `write_dataset` turns a plan
into files; `PicturePool` decodes and encodes each real picture once per session.
"""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
from hypothesis import strategies as st
from PIL import Image, ImageEnhance, ImageOps

from tests.fixtures_photos import PHOTOS, photo

GREY_PHOTOS = ("camera", "coins", "moon", "page", "text")
FASHION_COUNT = 12  # Fashion-MNIST pictures in the pool (28x28 grey)
SOURCES = (*(f"photo:{name}" for name in PHOTOS), *(f"photo:{name}" for name in GREY_PHOTOS),
           *(f"fashion:{index}" for index in range(FASHION_COUNT)))
HUGE = (6000, 4000)
# Which formats can hold each mode (as a user's tools would write them).
FORMATS = {
    "RGB": ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"),
    "L": ("PNG", "JPEG", "BMP", "TIFF"),
    "RGBA": ("PNG", "WEBP", "TIFF"),
    "LA": ("PNG",),
    "CMYK": ("JPEG", "TIFF"),
    "I;16": ("PNG", "TIFF"),
    "P": ("PNG", "GIF", "BMP"),
}
EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tiff",
              "GIF": ".gif"}
# (testing, validation) percentages besides the default 10, 10: none held out, 100 % held out,
# more than 100 % (a usage error).
PERCENTAGES = ((0, 10), (10, 0), (0, 0), (20, 30), (50, 50), (100, 0), (0, 100), (60, 60))
NEAR_COPIES = ("jpeg70", "resize50", "crop90", "shift", "brighter", "flip")


@dataclasses.dataclass(frozen=True)
class Picture:
    """A file made from scratch: `source` (one of SOURCES, "constant:R,G,B", "tiny" or "huge")
    in `mode`, saved as `image_format`."""

    source: str
    mode: str
    image_format: str


@dataclasses.dataclass(frozen=True)
class Copy:
    """A copy of the plan's file number `of` (an earlier one): its bytes (`near` None) or its
    picture changed by one of NEAR_COPIES."""

    of: int
    near: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class FilePlan:
    folder: str  # class folder name
    subfolders: tuple[str, ...]  # nested folders inside it
    name: str
    content: Union[Picture, Copy]

    @property
    def relpath(self) -> str:
        return "/".join((self.folder, *self.subfolders, self.name))


@dataclasses.dataclass(frozen=True)
class DatasetPlan:
    folders: tuple[str, ...]  # every class folder, empty ones included
    files: tuple[FilePlan, ...]
    testing_percentage: int
    validation_percentage: int
    modes: tuple[str, ...]  # retrain flags beyond the defaults (see `modes`)


class PicturePool:
    """The real pictures, decoded once; encoded files memoised by what makes them."""

    def __init__(self, fashion_dir: Optional[Path] = None) -> None:
        self._fashion = (sorted(path for folder in sorted(fashion_dir.iterdir()) if folder.is_dir()
                                for path in sorted(folder.iterdir())[:2])[:FASHION_COUNT]
                         if fashion_dir is not None else [])
        self._pictures: dict[str, Image.Image] = {}
        self._encoded: dict[Picture, bytes] = {}

    def picture(self, source: str) -> Image.Image:
        if source not in self._pictures:
            self._pictures[source] = self._make(source)
        return self._pictures[source]

    def _make(self, source: str) -> Image.Image:
        kind, _, detail = source.partition(":")
        if kind == "photo":
            image = photo(detail) if detail in PHOTOS else Image.fromarray(_skimage(detail))
            image.thumbnail((160, 160))  # small, so that 240 of them stay cheap
            return image
        if kind == "fashion":
            if not self._fashion:  # no Fashion-MNIST folder given: a photo instead
                return self._make(f"photo:{PHOTOS[int(detail) % len(PHOTOS)]}")
            return Image.open(self._fashion[int(detail) % len(self._fashion)]).convert("L")
        if kind == "constant":
            return Image.new("RGB", (48, 40), tuple(int(c) for c in detail.split(",")))
        if kind == "tiny":
            return Image.new("RGB", (1, 1), (200, 30, 90))
        if kind == "huge":
            return photo("astronaut").resize(HUGE, Image.Resampling.BILINEAR)
        raise ValueError(source)

    def encoded(self, picture: Picture) -> bytes:
        if picture not in self._encoded:
            image = in_mode(self.picture(picture.source), picture.mode)
            self._encoded[picture] = encode(image, picture.image_format)
        return self._encoded[picture]


def _skimage(name: str) -> np.ndarray:
    import skimage.data

    return getattr(skimage.data, name)()


def in_mode(image: Image.Image, mode: str) -> Image.Image:
    """`image` as a user's file in `mode` would hold it (alpha: a cut-out; 16-bit: scaled up)."""
    if mode == "I;16":
        grey = np.asarray(image.convert("L"), np.uint16)
        return Image.fromarray(grey * 257)  # the full 16-bit range
    if mode in ("RGBA", "LA"):
        cut = image.convert(mode)
        mask = Image.new("L", image.size, 0)
        width, height = image.size
        mask.paste(255, (width // 6, height // 6, max(width - width // 6, 1),
                         max(height - height // 6, 1)))
        cut.putalpha(mask)
        return cut
    if mode == "P":
        return image.convert("RGB").quantize(32)
    return image.convert(mode)


def encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    options = {"quality": 90} if image_format in ("JPEG", "WEBP") else {}
    if image_format == "PNG" and image.width * image.height > 1_000_000:
        options = {"compress_level": 1}
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def near_copy(data: bytes, how: str) -> bytes:
    """Another file of the same picture, changed as NEAR_COPIES names."""
    image = Image.open(io.BytesIO(data))
    image.seek(0)
    image = ImageOps.exif_transpose(image).convert("RGB")
    width, height = image.size
    if how == "jpeg70":
        return encode_jpeg(image, 70)
    if how == "resize50":
        image = image.resize((max(width // 2, 1), max(height // 2, 1)), Image.Resampling.BILINEAR)
    elif how == "crop90":
        left, top = width // 20, height // 20
        image = image.crop((left, top, max(width - left, left + 1), max(height - top, top + 1)))
    elif how == "shift":
        dx, dy = max(width // 16, 1), max(height // 16, 1)
        image = ImageOps.expand(image.crop((dx, dy, width, height)) if width > dx and height > dy
                                else image, (0, 0, dx, dy), fill=image.getpixel((0, 0)))
    elif how == "brighter":
        image = ImageEnhance.Brightness(image).enhance(1.2)
    elif how == "flip":
        image = ImageOps.mirror(image)
    return encode(image, "PNG")


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def write_dataset(plan: DatasetPlan, root: Path, pool: PicturePool) -> Path:
    """Write `plan`'s class folders and files under `root` (created). Returns `root`."""
    contents: list[bytes] = []
    for folder in plan.folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    for file in plan.files:
        content = file.content
        if isinstance(content, Picture):
            data = pool.encoded(content)
        elif content.near is None:
            data = contents[content.of]
        else:
            data = near_copy(contents[content.of], content.near)
        contents.append(data)
        path = root.joinpath(file.folder, *file.subfolders, file.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


# --- strategies ----------------------------------------------------------------------------------

# Names users give: unicode, spaces, a leading dash, 200 characters, shell and HTML characters.
ODD_STEMS = ("photo", "IMG 0001", "-rf", "--help", "ünïcödé 写真", "a" * 196, "émoji 🌹",
             " leading space", "trailing space ", "semi;colon&amp", "quote'\"", "tab\tname",
             "new\nline", "<b>bold</b>", "100%", "$HOME", "*")
ODD_FOLDERS = ("roses", "Wild Tulips Ü", "-dash", "玫瑰", "c" * 200, "with space", "UPPER",
               "Roses", "a&b<c>", "new\nline", "1", "ünï")


def _stems() -> st.SearchStrategy[str]:
    generated = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
                        min_size=1, max_size=30).filter(lambda s: not s.startswith("."))
    return st.one_of(st.sampled_from(ODD_STEMS), generated)


def _folder_names() -> st.SearchStrategy[str]:
    generated = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
                        min_size=1, max_size=20).filter(
        lambda s: not s.startswith(".") and s != "__MACOSX")
    return st.one_of(st.sampled_from(ODD_FOLDERS), generated).filter(_fits)


def _fits(name: str) -> bool:
    """A name the file system takes (at most 255 bytes)."""
    return len(os.fsencode(name)) <= 255


@st.composite
def pictures(draw) -> Picture:
    special = st.one_of(
        st.tuples(*[st.integers(0, 255)] * 3).map(lambda rgb: "constant:%d,%d,%d" % rgb),
        st.just("tiny"), st.just("huge"))
    source = draw(st.sampled_from(SOURCES) if draw(st.integers(0, 5)) else special)
    mode = draw(st.sampled_from(sorted(FORMATS)))
    image_format = draw(st.sampled_from(FORMATS[mode]))
    if source == "huge":  # one huge file costs a second of decoding per pass: JPEG or grey PNG
        image_format = "JPEG" if mode in ("RGB", "L", "CMYK") else "PNG"
        mode = mode if image_format == "JPEG" else "L"
    return Picture(source, mode, image_format)


@st.composite
def datasets(draw, max_classes: int = 6, max_per_class: int = 40,
             modes: st.SearchStrategy[tuple[str, ...]] = st.just(())) -> DatasetPlan:  # noqa: B008
    """A DatasetPlan: 1..max_classes class folders of 0..max_per_class files (small counts
    favoured: classes of 0, 1, 2, 3 are common)."""
    folder_count = draw(st.integers(1, max_classes))
    folders = draw(st.lists(_folder_names(), min_size=folder_count, max_size=folder_count,
                            unique=True))
    files: list[FilePlan] = []
    for position, folder in enumerate(folders):
        if position and draw(st.integers(0, 5)) == 0:  # the same images under a second label
            source = draw(st.sampled_from(folders[:position]))
            for index, file in enumerate(list(files)):
                if file.folder == source:
                    files.append(dataclasses.replace(file, folder=folder, content=Copy(index)))
            continue
        count = draw(st.one_of(st.sampled_from((0, 1, 2, 3)), st.integers(0, max_per_class)))
        names: set[str] = set()
        for _ in range(count):
            content = draw(pictures()) if not files or draw(st.integers(0, 3)) else draw(
                st.builds(Copy, st.integers(0, len(files) - 1),
                          st.one_of(st.none(), st.sampled_from(NEAR_COPIES))))
            subfolders = draw(st.sampled_from(((), (), (), ("sub",), ("a b", "ü ü"))))
            name = _unique(draw(_stems()) + _extension(draw, content, files), names)
            files.append(FilePlan(folder, subfolders, name, content))
    testing, validation = draw(st.one_of(st.just((10, 10)), st.sampled_from(PERCENTAGES)))
    return DatasetPlan(tuple(folders), tuple(files), testing, validation, draw(modes))


def _extension(draw, content: Union[Picture, Copy], files: list[FilePlan]) -> str:
    """Usually the format's own extension; sometimes another one, in any case."""
    while isinstance(content, Copy):
        if content.near is not None:
            return ".png" if content.near != "jpeg70" else ".jpg"
        content = files[content.of].content
    extension = EXTENSIONS[content.image_format]
    if draw(st.integers(0, 7)) == 0:
        extension = draw(st.sampled_from(sorted(EXTENSIONS.values())))
    return extension.upper() if draw(st.integers(0, 5)) == 0 else extension


def _unique(name: str, taken: set[str]) -> str:
    stem, extension = os.path.splitext(name)
    candidate, number = name, 1
    while candidate in taken or not _fits(candidate):
        stem = stem[:200]
        candidate, number = f"{stem}_{number}{extension}", number + 1
    taken.add(candidate)
    return candidate
