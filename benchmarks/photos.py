"""Real photographs for benchmarks, and camera-size or small photo sets made from them.

Source: the 12 photographs in Debian's `mate-backgrounds` package (`usr/share/backgrounds/mate/
nature/*.jpg`: 1280x1024 to 2560x1920 JPEGs of flowers, grass, leaves, a dune, a storm, a water
drop, wood). The package's other pictures are a painting (Elephants, up to 5640x3172), a logo
and drawn patterns, and `gnome-backgrounds` (43.x) ships only rendered art, so neither is used.
The package is fetched with `apt-get download` into a cache folder and unpacked there with
`dpkg-deb`; it is never installed system-wide.

`photo_set` makes N photos of a given size from them, as a camera or phone would deliver: a random
crop (the target's aspect, 40-80 % of the largest such crop), mirrored half the time, resized
(camera size is larger than every source, so most are enlarged), with sensor-like noise (shot
noise growing with brightness plus read noise, independent per pixel and channel), saved as JPEG
at quality 93 with 4:2:0 chroma. One class folder per source photograph. Deterministic for a seed;
built beside its folder and renamed into place, and reused when asked again with the same settings.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
PHOTOS_ENV = "RETRAINER_PHOTOGRAPHS"  # a folder of source JPEGs, instead of the Debian package
PACKAGE = "mate-backgrounds"
PACKAGE_FOLDER = "usr/share/backgrounds/mate/nature"
CAMERA = (4000, 3000)  # (width, height): 12 MP, a phone's 4:3 photo
SMALL = (480, 360)
QUALITY = 93
CROP = (0.4, 0.8)  # crop side as a fraction of the largest crop of the target's aspect
# Noise standard deviation, 0-255 units: sqrt(SHOT x intensity + READ), about 1.7 in the shadows
# and 5.8 in the highlights, like a phone camera's photo at moderate ISO.
SHOT, READ = 0.12, 3.0
MARKER = ".photo_set.json"


def debian_photographs(cache: str | os.PathLike[str] | None = None) -> list[Path]:
    """The source photographs, sorted: $RETRAINER_PHOTOGRAPHS/*.jpg if set, else mate-backgrounds'
    nature photos, fetched into `cache` (default .cache/debian-photographs) on first use.

    Raises:
        SystemExit: the package cannot be fetched (the message says what to run).
    """
    if os.environ.get(PHOTOS_ENV):
        photos = sorted(Path(os.environ[PHOTOS_ENV]).glob("*.jpg"))
        if not photos:
            raise SystemExit(f"${PHOTOS_ENV}={os.environ[PHOTOS_ENV]} holds no .jpg photographs")
        return photos
    folder = Path(cache or REPO / ".cache" / "debian-photographs") / PACKAGE
    if not folder.is_dir():
        _fetch_package(folder)
    return sorted(folder.glob("*.jpg"))


def _fetch_package(folder: Path) -> None:
    """apt-get download + dpkg-deb -x into a temp folder; the photos renamed into `folder`."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as work:
        download = ["apt-get", "download", PACKAGE]
        if subprocess.run(download, cwd=work, capture_output=True).returncode != 0:
            if os.geteuid() != 0:
                raise SystemExit(f"`apt-get download {PACKAGE}` failed; run `apt-get update` as "
                                 f"root, or set ${PHOTOS_ENV} to a folder of JPEG photographs")
            subprocess.run(["apt-get", "update", "-qq"], check=True)
            subprocess.run(download, cwd=work, check=True, capture_output=True)
        (package,) = Path(work).glob(f"{PACKAGE}_*.deb")
        subprocess.run(["dpkg-deb", "-x", str(package), os.path.join(work, "unpacked")],
                       check=True)
        photos = Path(work) / "unpacked" / PACKAGE_FOLDER
        if not any(photos.glob("*.jpg")):
            raise SystemExit(f"{package.name} has no photographs under /{PACKAGE_FOLDER}")
        (photos / ".package").write_text(package.name + "\n")
        os.replace(photos, folder)


def photo_set(out: str | os.PathLike[str], count: int, size: tuple[int, int] = CAMERA,
              seed: int = 0, noise: bool = True, workers: int | None = None,
              crop: tuple[float, float] = CROP) -> list[Path]:
    """`count` JPEG photos of `size` (width, height) in `out`/<source photo>/<name>.jpg.

    Args:
        out: the folder to create (replaced only if an earlier call made it).
        count: photos, dealt round-robin over the source photographs.
        size: (width, height) of each photo; `CAMERA` is 12 MP.
        seed: the crops, mirrors and noise follow from it.
        noise: add sensor-like noise (as a camera's photos have; it also makes the files as
            large as a camera's: about 3 MB at 12 MP).
        workers: processes making photos (default: every CPU).
        crop: the range of the crop's side, as a fraction of the largest crop of `size`'s aspect.

    Returns:
        The photo files, sorted.
    """
    out = Path(os.path.abspath(out))
    sources = debian_photographs()
    settings = {"count": count, "size": list(size), "seed": seed, "noise": noise,
                "quality": QUALITY, "sources": [path.name for path in sources]}
    if crop != CROP:
        settings["crop"] = list(crop)
    if _built_with(out) != settings:
        if out.exists() and _built_with(out) is None and any(out.iterdir()):
            raise FileExistsError(f"{out} exists and was not made by photo_set; choose another")
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            jobs = [(sources[index % len(sources)],
                     staging / sources[index % len(sources)].stem / f"photo_{index:04d}.jpg",
                     size, seed * 1_000_003 + index, noise, crop) for index in range(count)]
            for source in sources[:count]:
                (staging / source.stem).mkdir()
            with ProcessPoolExecutor(workers or os.cpu_count()) as pool:
                list(pool.map(_make_photo, *zip(*jobs)))
            (staging / MARKER).write_text(json.dumps(settings, indent=1) + "\n")
            if out.exists():
                shutil.rmtree(out)
            os.replace(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return sorted(out.glob("*/*.jpg"))


def _built_with(out: Path) -> dict | None:
    try:
        return json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _make_photo(source: Path, target: Path, size: tuple[int, int], seed: int,
                noise: bool, crop: tuple[float, float]) -> None:
    rng = np.random.default_rng(seed)
    with Image.open(source) as opened:
        photo = opened.convert("RGB")
    width, height = size
    scale = min(photo.width / width, photo.height / height)  # the largest crop of this aspect
    side = scale * rng.uniform(*crop)
    crop_w, crop_h = round(width * side), round(height * side)
    left = int(rng.integers(0, photo.width - crop_w + 1))
    top = int(rng.integers(0, photo.height - crop_h + 1))
    image = photo.resize(size, Image.Resampling.BICUBIC,
                         box=(left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if noise:
        pixels = np.asarray(image)
        sigma = np.sqrt(SHOT * np.arange(256, dtype=np.float32) + READ)[pixels]
        noisy = pixels + sigma * rng.standard_normal(pixels.shape, dtype=np.float32)
        image = Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8))
    image.save(target, "JPEG", quality=QUALITY, subsampling="4:2:0")
