"""Write the golden bottleneck-cache entries that tests/test_cache_golden.py compares against.

    .venv/bin/python scripts/make_cache_golden.py [--inputs] [--code DIR]

The golden files pin what a cache entry is, byte for byte: the pixels each input decodes to, the
entry paths under --bottleneck_dir (plain, distorted, per precision), the bytes of every entry
(packs and lone `.npy` files), and the bytes of a shard record. They were written by the code as it
stood before the package was reorganised (commit ce38483), so the test shows that the new layout
writes the same entries. Rerun this only when the cache format deliberately changes (then bump
`CACHE_FORMAT`): the test exists to catch every other change.

Pixels depend on Pillow's version (13.0 changed the order of resize's passes), so golden.json holds
one record (pixels, entries, machine) per Pillow version, and a run replaces only the record of the
Pillow it runs with. A new Pillow that decodes differently gets its record from the code before the
reorganisation, in a worktree of ab5833e (ce38483's code with the first version of this script):

    git worktree add --detach /tmp/before ab5833e
    .venv/bin/python scripts/make_cache_golden.py --code /tmp/before   # in a venv with that Pillow

`--inputs` also rewrites the small input images (from scikit-image's photos and generated arrays);
normally they stay as committed, so that a new Pillow encoder cannot change them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "data" / "cache_golden"
INPUTS = GOLDEN / "inputs"


def write_inputs() -> None:
    """Small images covering the decoder's paths: camera JPEG (draft), EXIF, alpha, grey, 16-bit."""
    import skimage.data

    INPUTS.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261203)
    Image.fromarray(skimage.data.coffee()).resize((512, 342)).save(INPUTS / "photo.jpg", quality=75)
    cat = Image.fromarray(skimage.data.chelsea()).crop((100, 50, 300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, shown rotated
    cat.save(INPUTS / "rotated.jpg", quality=90, exif=exif)
    Image.fromarray(skimage.data.logo()).resize((120, 120)).save(INPUTS / "alpha.png")
    Image.fromarray(skimage.data.camera()).resize((128, 128)).save(INPUTS / "grey.jpg", quality=90)
    ramp = (np.linspace(0, 65535, 40 * 30).reshape(30, 40)).astype(np.uint16)
    Image.fromarray(ramp).save(INPUTS / "grey16.png")
    palette = Image.frombytes("P", (50, 50), rng.integers(0, 8, (50, 50), dtype=np.uint8).tobytes())
    palette.putpalette([value for index in range(8) for value in (index * 32, 255 - index * 32, 90)])
    palette.save(INPUTS / "palette.gif", transparency=0)
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(INPUTS / "tiny.png")
    cmyk = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
    Image.frombytes("CMYK", (64, 64), cmyk.tobytes()).save(INPUTS / "cmyk.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(
        INPUTS / "noise.webp", lossless=True)
    (INPUTS / "broken.jpg").write_text("this is not an image\n")


def input_paths() -> list[Path]:
    return sorted(INPUTS.iterdir())


def tree(root: Path) -> dict[str, str]:
    """{relative path: sha256 of the bytes} of every file below `root`."""
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def machine() -> dict[str, str]:
    """What float32 results depend on: vectors are compared bit for bit only on the same."""
    import platform

    import tensorflow as tf

    from tests.test_cache_golden import cpu_fingerprint

    return {"cpu": cpu_fingerprint(), "tensorflow": tf.__version__, "machine": platform.machine()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", action="store_true", help="rewrite the input images too")
    parser.add_argument("--code", type=Path, default=REPO,
                        help="checkout whose retrainer/ and tests/ write the entries (default: this)")
    args = parser.parse_args()
    sys.path.insert(0, str(args.code.resolve()))
    if args.inputs:
        write_inputs()
    from tests import test_cache_golden as golden

    record = {"machine": machine(), "pixels": golden.pixel_digests(input_paths()), "runs": {}}
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["XDG_CACHE_HOME"] = os.path.join(scratch, "xdg")  # the int8 model's cache
        for name, run in golden.RUNS.items():
            cache = Path(scratch) / name
            skipped = run(input_paths(), cache)
            files = tree(cache)
            record["runs"][name] = {"skipped": skipped, "files": files}
            for path, digest in files.items():  # one copy of each distinct file (packs repeat)
                blob = GOLDEN / "blobs" / f"{digest}.npy"
                blob.parent.mkdir(parents=True, exist_ok=True)
                blob.write_bytes((cache / path).read_bytes())
    path = GOLDEN / "golden.json"
    document = json.loads(path.read_text()) if path.exists() else {"pillow": {}}
    document["pillow"][PIL.__version__] = record
    document["shard_records"] = golden.shard_record_digests()
    path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    print(f"Wrote {path} for Pillow {PIL.__version__}: " + ", ".join(
        f"{name} {len(run['files'])} entries" for name, run in record["runs"].items()))


if __name__ == "__main__":
    main()
