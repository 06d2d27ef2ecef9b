"""Known faults injected into a real image folder, and how many of them the audit finds.

Near copies of training images, each named so that it lands in another split (a leak):
  jpeg q70, resize 50%, crop 90% (at a random place), brightness +20%, flip (mirrored); and on
  Fashion-MNIST also the kinds its thresholds were first measured with: resize 2x, shift 1 px,
  crop 1 px a side (resized back), brightness x1.3.
Byte copies into another class's folder; label flips (3 % of the images moved to another class's
folder); unrelated pictures (optional) dropped into random class folders.
"""

from __future__ import annotations

import dataclasses
import io
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance

COMMON_KINDS = ("jpeg q70", "resize 50%", "crop 90%", "brightness +20%", "flip")
FASHION_KINDS = COMMON_KINDS + ("resize 2x", "shift 1 px", "crop 1 px", "brightness x1.3")
LABEL_FLIPS = 0.03


def near_copy(image: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """A re-made copy of `image` (see the module docstring for the kinds)."""
    width, height = image.size
    if kind == "jpeg q70":
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=70)
        return Image.open(io.BytesIO(buffer.getvalue())).copy()
    if kind in ("resize 50%", "resize 2x"):
        factor = 0.5 if kind == "resize 50%" else 2.0
        return image.resize((round(width * factor), round(height * factor)),
                            Image.Resampling.BILINEAR)
    if kind == "crop 90%":
        side_w, side_h = round(width * 0.9), round(height * 0.9)
        left = int(rng.integers(0, width - side_w + 1))
        top = int(rng.integers(0, height - side_h + 1))
        return image.crop((left, top, left + side_w, top + side_h))
    if kind == "crop 1 px":
        return image.crop((1, 1, width - 1, height - 1)).resize(image.size,
                                                                Image.Resampling.BILINEAR)
    if kind == "shift 1 px":
        pixels = np.asarray(image)
        shifted = np.zeros_like(pixels)
        shifted[1:, :-1] = pixels[:-1, 1:]
        return Image.fromarray(shifted)
    if kind in ("brightness +20%", "brightness x1.3"):
        return ImageEnhance.Brightness(image).enhance(1.2 if kind == "brightness +20%" else 1.3)
    if kind == "flip":
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    raise ValueError(f"unknown kind {kind!r}")


@dataclasses.dataclass
class Truth:
    """What was injected: relative paths (class/name), pairs as frozensets."""

    near: dict[str, set[frozenset[str]]]
    byte: set[frozenset[str]]
    flips: set[str]
    unrelated: set[str]


def inject_faults(root: Path, rng: np.random.Generator, kinds: Sequence[str], per_kind: int,
                  split_of: Callable[[str], str],
                  unrelated: Sequence[tuple[str, Image.Image]] = ()) -> Truth:
    """Inject the faults into `root` (class folders, changed in place); returns the truth.

    `split_of(relpath)` is retrain's split of a relative path (copies go to another split than
    their training original's).
    """
    classes = sorted(path for path in root.iterdir() if path.is_dir())
    files = sorted(path for folder in classes for path in folder.iterdir())
    rng.shuffle(files)
    truth = Truth({kind: set() for kind in kinds}, set(), set(), set())
    cursor = 0
    for kind in kinds:
        placed = 0
        while placed < per_kind:
            source = files[cursor]
            cursor += 1
            relpath = f"{source.parent.name}/{source.name}"
            if split_of(relpath) != "training":
                continue
            suffix = ".jpg" if kind == "jpeg q70" else source.suffix
            name = _name_in_other_split(source.parent, source.stem, suffix, split_of)
            with Image.open(source) as image:
                near_copy(image, kind, rng).save(source.parent / name)
            truth.near[kind].add(frozenset({relpath, f"{source.parent.name}/{name}"}))
            placed += 1
    for source in files[cursor:cursor + per_kind]:
        other = classes[(classes.index(source.parent) + 1) % len(classes)]
        shutil.copyfile(source, other / f"dup_{source.name}")
        truth.byte.add(frozenset({f"{source.parent.name}/{source.name}",
                                  f"{other.name}/dup_{source.name}"}))
    cursor += per_kind
    for source in files[cursor:cursor + max(1, int(LABEL_FLIPS * len(files)))]:
        other = classes[(classes.index(source.parent) + int(rng.integers(1, len(classes))))
                        % len(classes)]
        source.rename(other / source.name)
        truth.flips.add(f"{other.name}/{source.name}")
    for index, (name, picture) in enumerate(unrelated):
        folder = classes[index % len(classes)]
        picture.save(folder / f"unrelated_{name}.png")
        truth.unrelated.add(f"{folder.name}/unrelated_{name}.png")
    return truth


def _name_in_other_split(folder: Path, stem: str, suffix: str,
                         split_of: Callable[[str], str]) -> str:
    for attempt in range(1000):
        name = f"{stem}_copy{attempt}{suffix}"
        if split_of(f"{folder.name}/{name}") != "training":
            return name
    raise RuntimeError("no name found")


@dataclasses.dataclass(frozen=True)
class Score:
    found: int
    expected: int
    flagged: int  # everything flagged of this kind (for precision), or -1 when not defined

    def recall(self) -> str:
        return f"{self.found / self.expected:.2f} ({self.found}/{self.expected})" \
            if self.expected else "-"

    def precision(self) -> str:
        return f"{self.found / self.flagged:.2f} ({self.found}/{self.flagged})" \
            if self.flagged > 0 else "-"


def scores(relpaths: Sequence[str], findings, truth: Truth) -> dict[str, Score]:
    """Recall per near-copy kind, and recall + precision of near copies, byte copies, label
    flips and unrelated pictures, from an audit's `Findings` (positions into `relpaths`)."""
    exact = {frozenset({relpaths[a], relpaths[b]}) for group in findings.exact
             for a in group for b in group if a < b}
    near = {frozenset({relpaths[a], relpaths[b]}) for group, _ in findings.near
            for a in group for b in group if a < b} - exact
    result = {f"near: {kind}": Score(len(near & pairs), len(pairs), -1)
              for kind, pairs in truth.near.items()}
    injected = set().union(*truth.near.values())
    result["near copies, all kinds"] = Score(len(near & injected), len(injected), len(near))
    result["byte copies"] = Score(len(exact & truth.byte), len(truth.byte), len(exact))
    mislabeled = {relpaths[p] for p, _, _ in findings.mislabeled}
    result["label flips"] = Score(len(mislabeled & truth.flips), len(truth.flips),
                                  len(mislabeled))
    if truth.unrelated:
        far = {relpaths[p] for p, _ in findings.outliers}
        result["unrelated pictures (outliers)"] = Score(len(far & truth.unrelated),
                                                        len(truth.unrelated), len(far))
    return result


def not_injected(relpaths: Sequence[str], findings, truth: Truth) -> dict[str, list]:
    """What the audit flagged that was not injected (to look at by eye)."""
    injected = set().union(*truth.near.values()) | truth.byte
    near = sorted(tuple(relpaths[p] for p in group) for group, _ in findings.near
                  if not any(frozenset({relpaths[a], relpaths[b]}) in injected
                             for a in group for b in group if a < b))
    explained = {path for pair in truth.byte for path in pair} | truth.unrelated
    return {"near-duplicate groups": near,
            "likely mislabeled": sorted({relpaths[p] for p, _, _ in findings.mislabeled}
                                        - truth.flips - explained),
            "outliers": sorted({relpaths[p] for p, _ in findings.outliers}
                               - truth.flips - explained)}
