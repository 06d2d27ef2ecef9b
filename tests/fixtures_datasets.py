"""Drawn datasets for the property tests of the whole pipeline (tests/test_properties_pipeline.py).

A `DatasetPlan` is plain data that Hypothesis draws and shrinks: class folders (odd names, nested
sub-folders, empty, of 1, 2, 3 ... 40 images), each file made from a real picture (scikit-image's
photographs and Fashion-MNIST) in some mode and format, a constant colour, a 1x1 or a 6000x4000
picture, or a byte or near copy (re-encoded, resized, cropped, shifted, brightened, flipped) of an
earlier file, in the same class or another; whole classes copied under a second label; files that
are not images (notes, sound, truncated or empty pictures, macOS/Windows leftovers); symbolic and
hard links to pictures (inside the folder or outside it), broken links, named pipes; the split
percentages and the modes (distortions, fine-tuning, exports, gates). `write_dataset` turns a plan
into files; `PicturePool` decodes and encodes each real picture once per session.
"""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path
from typing import Optional, Sequence, Union

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
# Besides the plain formats: a phone's JPEG (pixels stored sideways, EXIF Orientation 6), a
# progressive JPEG, animated GIF and PNG (APNG; the first frame counts).
FORMATS = {
    "RGB": ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF", "PPM", "JPEG_EXIF_ROTATED",
            "JPEG_PROGRESSIVE", "GIF_ANIMATED", "PNG_ANIMATED"),
    "L": ("PNG", "JPEG", "BMP", "TIFF", "PPM"),
    "RGBA": ("PNG", "WEBP", "TIFF", "PNG_ANIMATED"),
    "LA": ("PNG",),
    "CMYK": ("JPEG", "TIFF"),
    "I;16": ("PNG", "TIFF"),  # 16-bit grey
    "I": ("TIFF",),  # 32-bit integer grey
    "F": ("TIFF",),  # 32-bit float grey (scientific cameras, 0..1)
    "1": ("PNG", "BMP", "TIFF", "GIF", "PPM"),  # bilevel (scans, line art)
    "P": ("PNG", "GIF", "BMP"),
}
EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tiff",
              "GIF": ".gif", "PPM": ".ppm", "JPEG_EXIF_ROTATED": ".jpg",
              "JPEG_PROGRESSIVE": ".jpeg", "GIF_ANIMATED": ".gif", "PNG_ANIMATED": ".png"}
# Files that are not (whole) images, as users' folders hold them: notes, sound, a text file or
# nothing behind an image extension, a truncated download, macOS and Windows leftovers.
JUNK = {"notes": "notes.txt", "sound": "sound.wav", "text_as_jpg": "not a photo.jpg",
        "empty_png": "empty.png", "truncated_jpg": "cut off.jpg", "ds_store": ".DS_Store",
        "apple_double": "._photo.jpg", "thumbs_db": "Thumbs.db"}
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
class Junk:
    """A file that is not a (whole) image: one of JUNK, named as there."""

    kind: str


@dataclasses.dataclass(frozen=True)
class Link:
    """A link to the plan's file number `of`: "symlink" (relative), "hardlink", "outside" (a
    symlink to a copy outside the image folder); or a "broken" symlink, or a "fifo" (a named
    pipe: reading it would wait forever)."""

    kind: str
    of: int = 0


LINKS = ("symlink", "hardlink", "outside", "broken", "fifo")
Content = Union[Picture, Copy, Junk, Link]


@dataclasses.dataclass(frozen=True)
class FilePlan:
    folder: str  # class folder name
    subfolders: tuple[str, ...]  # nested folders inside it
    name: str
    content: Content

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
    if mode in ("I", "F"):
        grey = np.asarray(image.convert("L"), np.float32)
        # 32-bit integers holding 16-bit values (TIFF; Pillow 13 writes no mode-I PNG) / floats in 0..1
        return Image.fromarray((grey * 257).astype(np.int32) if mode == "I" else grey / 255)
    return image.convert(mode)


def encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    options: dict[str, object] = {"quality": 90} if "JPEG" in image_format or (
        image_format == "WEBP") else {}
    if image_format == "PNG" and image.width * image.height > 1_000_000:
        options = {"compress_level": 1}
    if image_format == "JPEG_EXIF_ROTATED":  # stored sideways, as a phone held upright does
        exif = Image.Exif()
        exif[0x0112] = 6
        image, options = image.transpose(Image.Transpose.ROTATE_90), {**options, "exif": exif}
    elif image_format == "JPEG_PROGRESSIVE":
        options["progressive"] = True
    elif image_format.endswith("_ANIMATED"):  # a second frame, mirrored
        options.update(save_all=True, append_images=[ImageOps.mirror(image)], duration=100,
                       loop=0)
    image.save(buffer, image_format.split("_")[0], **options)
    return buffer.getvalue()


def junk(kind: str, earlier: list[bytes]) -> bytes:
    """The bytes of a JUNK file (a truncated download cuts an earlier JPEG, or a made one)."""
    if kind == "sound":  # a RIFF/WAVE header and a little silence
        return b"RIFF$\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00D\xac\x00\x00" \
            b"\x88X\x01\x00\x02\x00\x10\x00data\x00\x00\x00\x00"
    if kind == "empty_png":
        return b""
    if kind == "truncated_jpg":
        whole = next((data for data in earlier if data[:2] == b"\xff\xd8"), None)
        if whole is None:
            whole = encode_jpeg(Image.new("RGB", (64, 48), (10, 120, 200)), 90)
        return whole[:max(len(whole) // 2, 2)]
    if kind == "ds_store":
        return b"\x00\x00\x00\x01Bud1" + bytes(100)
    if kind == "apple_double":
        return b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(60)
    if kind == "thumbs_db":
        return b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(200)
    return "Sortiert nach Farbe — siehe Notizen.\n".encode()  # notes, text_as_jpg


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
    for index, file in enumerate(plan.files):
        content = file.content
        path = root.joinpath(file.folder, *file.subfolders, file.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Link):
            contents.append(contents[content.of] if content.kind in LINKS[:3] else b"")
            _link(content, path, root.joinpath(plan.files[content.of].relpath),
                  root.parent / f"{root.name} outside", index)
            continue
        if isinstance(content, Junk):
            data = junk(content.kind, contents)
        elif isinstance(content, Picture):
            data = pool.encoded(content)
        elif content.near is None:
            data = contents[content.of]
        else:
            data = near_copy(contents[content.of], content.near)
        contents.append(data)
        path.write_bytes(data)
    return root


def _link(link: Link, path: Path, target: Path, outside: Path, index: int) -> None:
    if link.kind == "symlink":
        os.symlink(os.path.relpath(target, path.parent), path)
    elif link.kind == "hardlink":
        os.link(target, path)
    elif link.kind == "outside":  # to a copy in a folder beside the image folder
        copy = outside / f"{index}{target.suffix}"
        copy.parent.mkdir(exist_ok=True)
        copy.write_bytes(target.read_bytes())
        os.symlink(copy, path)
    elif link.kind == "broken":
        os.symlink("no such picture.jpg", path)
    else:
        os.mkfifo(path)


# --- strategies ----------------------------------------------------------------------------------

# Names users give: unicode, spaces, a leading dash, 200 characters, shell and HTML characters.
ODD_STEMS = ("photo", "IMG 0001", "-rf", "--help", "ünïcödé 写真", "a" * 196, "émoji 🌹",
             " leading space", "trailing space ", "semi;colon&amp", "quote'\"", "tab\tname",
             "new\nline", "<b>bold</b>", "100%", "$HOME", "*", "back\\slash", "..", "con")
# Pairs a person reads as one name: "Roses"/"roses", and "Café" composed (NFC, as typed on most
# systems) and decomposed (NFD, as macOS writes it).
ODD_FOLDERS = ("roses", "Wild Tulips Ü", "-dash", "玫瑰", "c" * 200, "with space", "UPPER",
               "Roses", "a&b<c>", "new\nline", "1", "ünï", "Caf\u00e9", "Cafe\u0301", "..x")


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
    if source == "tiny" and image_format == "JPEG_EXIF_ROTATED":
        image_format = "JPEG"
    return Picture(source, mode, image_format)


@st.composite
def datasets(draw, max_classes: int = 6, max_per_class: int = 40,
             modes: st.SearchStrategy[tuple[str, ...]] = st.just(()),  # noqa: B008
             trainable: bool = False) -> DatasetPlan:
    """A DatasetPlan: 1..max_classes class folders of 0..max_per_class files (small counts
    favoured: classes of 0, 1, 2, 3 are common). `trainable`: 2 or more classes of 4 or more
    files and some of them for training, so that most draws reach the extractor (for the slow
    runs, where each costs seconds)."""
    # Hypothesis favours the first choice and small integers: 1 class (always exit 3) would be a
    # third of the draws.
    folder_count = draw(st.sampled_from((3, *range(2, max_classes + 1), *((1,) * (not trainable)))))
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
        count = draw(st.integers(4, max_per_class) if trainable else st.one_of(
            st.sampled_from((0, 1, 2, 3)), st.integers(4, max_per_class),
            st.integers(4, max_per_class)))
        names: set[str] = set()
        for _ in range(count):
            copyable = _copyable(files)
            content = draw(pictures()) if not copyable or draw(st.integers(0, 3)) else draw(
                st.builds(Copy, st.sampled_from(copyable),
                          st.one_of(st.none(), st.sampled_from(NEAR_COPIES))))
            subfolders = draw(st.sampled_from(((), (), (), ("sub",), ("a b", "ü ü"))))
            name = _unique(draw(_stems()) + _extension(draw, content, files), names)
            files.append(FilePlan(folder, subfolders, name, content))
        if draw(st.integers(0, 4)) == 0:  # a file that is not an image, among the pictures
            kind = draw(st.sampled_from(sorted(JUNK)))
            files.append(FilePlan(folder, (), _unique(JUNK[kind], names), Junk(kind)))
        if draw(st.integers(0, 5)) == 0:  # a link (to an earlier picture), a named pipe
            link = Link(draw(st.sampled_from(LINKS)), draw(st.sampled_from(_copyable(files) or [0])))
            if link.kind in LINKS[:3] and not _copyable(files):
                link = Link("broken")
            name = _unique(draw(_stems()) + _extension(draw, link, files), names)
            files.append(FilePlan(folder, (), name, link))
    testing, validation = draw(st.one_of(st.just((10, 10)), st.just((10, 10)),
                                         st.sampled_from(PERCENTAGES[:4] if trainable
                                                         else PERCENTAGES)))
    return DatasetPlan(tuple(folders), tuple(files), testing, validation, draw(modes))


def _copyable(files: list[FilePlan]) -> list[int]:
    """The files a copy or link may be made of: pictures, their copies and links."""
    return [index for index, file in enumerate(files)
            if isinstance(original(file.content, files), Picture)]


def original(content: Content, files: Sequence[FilePlan]) -> Union[Picture, Junk, Link]:
    """What a chain of copies and links leads to (a broken link or a pipe: itself)."""
    while isinstance(content, Copy) or (isinstance(content, Link) and content.kind in LINKS[:3]):
        content = files[content.of].content
    return content


def _extension(draw, content: Content, files: list[FilePlan]) -> str:
    """Usually the format's own extension; sometimes another one, in any case."""
    if isinstance(content, Link) and content.kind not in LINKS[:3]:
        return ".jpg" if content.kind == "broken" else ".png"
    while isinstance(content, (Copy, Link)):
        if isinstance(content, Copy) and content.near is not None:
            return ".png" if content.near != "jpeg70" else ".jpg"
        content = files[content.of].content
    assert isinstance(content, Picture)
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
