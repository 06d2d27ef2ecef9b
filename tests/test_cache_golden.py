"""Cache entries are bit-identical to those the code wrote before the package was reorganised.

tests/data/cache_golden/ holds small inputs (a camera-style JPEG, EXIF rotation, alpha, grey,
16-bit, palette, CMYK, WebP, one broken file) and what the bottleneck stage wrote for them at commit
ce38483 (scripts/make_cache_golden.py): the decoded pixels' digests, every entry path under the
cache root (plain packs, lone `.npy` entries, distorted variants, float32 and int8 namespaces) with
its bytes, and shard records. Pixels, paths and file layout are compared exactly everywhere. The
vectors inside are compared bit for bit on a machine like the one that wrote them (same CPU
features and TensorFlow); on another, TensorFlow's float kernels may round differently, so there
the entries must match in every byte but the vectors', and the vectors to float tolerance.

Pixels depend on Pillow too: from 13.0 its resize runs the vertical pass first when that is
cheaper (rotated.jpg at 32x32 rounds differently), and apache-beam, the `.[beam]` extra, requires
pillow<13. So the golden files hold one record per Pillow that ce38483's code was run with
(12.3.0, which decodes like 10.4 and 11.3, and 13.0.0), and each install is compared with the
record of its own Pillow's generation: the old code and the new decode alike under the same Pillow.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import platform
from pathlib import Path
from typing import Callable

import numpy as np
import PIL
import pytest

from retrainer.cache.bottlenecks import compute_bottlenecks
from retrainer.cache.shards import encode_record
from retrainer.data.decoding import UnreadableImageError, load_image
from retrainer.engines.cpu import cpu_flags
from retrainer.engines.factory import create_engine
from retrainer.extractors import create_extractor
from retrainer.training.distorted_bottlenecks import compute_distorted_bottlenecks
from retrainer.training.distortions import Distortions
from tests.fixtures_extractors import TinyExtractor

GOLDEN = Path(__file__).resolve().parent / "data" / "cache_golden"
# The CPU features that decide which float kernels oneDNN and XNNPACK pick.
_KERNEL_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
                 "amx_bf16", "amx_int8", "avx512_fp16", "asimd", "sve", "bf16")


def cpu_fingerprint() -> str:
    return ",".join(flag for flag in _KERNEL_FLAGS if flag in cpu_flags()) or "none"


def pixel_digests(paths: list[Path]) -> dict[str, dict[str, str]]:
    """{file name: {"HxW": sha256 of the uint8 pixels, or the reason it does not decode}}."""
    digests: dict[str, dict[str, str]] = {}
    for path in paths:
        digests[path.name] = {}
        for size in ((224, 224), (32, 32), (260, 260)):
            try:
                pixels = load_image(path, size)
            except UnreadableImageError as error:  # the reason is pinned too
                digests[path.name][f"{size[0]}x{size[1]}"] = f"error: {error.reason}"
            else:
                digests[path.name][f"{size[0]}x{size[1]}"] = hashlib.sha256(
                    pixels.tobytes()).hexdigest()
    return digests


@functools.lru_cache(maxsize=None)
def _lite0():
    return create_extractor("efficientnet_lite0")


def _plain(engine: Callable[[], object], batch_size: int = 32):
    def run(paths: list[Path], cache: Path) -> list[list[str]]:
        result = compute_bottlenecks(paths, engine(), cache, batch_size, show_progress=False)
        return [[paths[index].name, reason] for index, reason in result.skipped]

    return run


def _distorted(paths: list[Path], cache: Path) -> list[list[str]]:
    result = compute_distorted_bottlenecks(
        paths, TinyExtractor(), cache, Distortions(True, 10, 10, 20), variants=2, seed=7,
        show_progress=False)
    return [[path.name, "not decoded"] for path, ok in zip(paths, result.ok) if not ok]


RUNS: dict[str, Callable[[list[Path], Path], list[list[str]]]] = {
    "tiny_test_packs": _plain(TinyExtractor),
    "tiny_test_lone": _plain(TinyExtractor, batch_size=1),
    "tiny_test_distorted": _distorted,
    "efficientnet_lite0_float32": _plain(lambda: create_engine(_lite0(), "float32")),
    "efficientnet_lite0_int8": _plain(lambda: create_engine(_lite0(), "int8")),
}


def shard_record_digests() -> list[str]:
    """sha256 of `encode_record` for fixed (digest, vector) pairs: the shard runs' record bytes."""
    rng = np.random.default_rng(3)
    return [hashlib.sha256(encode_record(hashlib.sha256(size.to_bytes(2, "little")).hexdigest(),
                                         rng.normal(size=size).astype(np.float32))).hexdigest()
            for size in (1, 16, 1280)]


def pillow_generation(version: str) -> str:
    """Pillows that decode the inputs alike: 13.0 changed the order of resize's two passes."""
    return "pillow<13" if int(version.split(".")[0]) < 13 else "pillow>=13"


def _version(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:3] if part.isdigit())


@pytest.fixture(scope="module")
def golden_document() -> dict:
    return json.loads((GOLDEN / "golden.json").read_text())


@pytest.fixture(scope="module")
def golden(golden_document) -> dict:
    """The record written under this Pillow, else under the newest one of its generation."""
    records = golden_document["pillow"]
    alike = [version for version in records
             if pillow_generation(version) == pillow_generation(PIL.__version__)]
    if not alike:
        pytest.fail(f"no golden record for Pillow {PIL.__version__}: write one with ce38483's code "
                    "(scripts/make_cache_golden.py --code, see its docstring)")
    recorded = PIL.__version__ if PIL.__version__ in alike else max(alike, key=_version)
    return {**records[recorded], "pillow": recorded}


def _inputs() -> list[Path]:
    return sorted((GOLDEN / "inputs").iterdir())


def _same_machine(golden: dict) -> bool:
    import tensorflow as tf

    return golden["machine"] == {"cpu": cpu_fingerprint(), "tensorflow": tf.__version__,
                                 "machine": platform.machine()}


def test_inputs_decode_to_the_same_pixels(golden):
    assert pixel_digests(_inputs()) == golden["pixels"], (
        f"Pillow {PIL.__version__}, golden pixels recorded with Pillow {golden['pillow']}")


def test_every_supported_pillow_generation_has_a_record(golden_document):
    """pyproject allows pillow>=10 (a fresh install gets 13.x, one with .[beam] 12.x): both kept."""
    assert {pillow_generation(version) for version in golden_document["pillow"]} == {
        "pillow<13", "pillow>=13"}


def test_shard_records_are_the_same_bytes(golden_document):
    assert shard_record_digests() == golden_document["shard_records"]


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.slow) if name.endswith("int8") else name  # 10 s: converts
    for name in RUNS])
def test_cache_entries_are_bit_identical(name, golden, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the int8 model's cache
    expected = golden["runs"][name]
    skipped = RUNS[name](_inputs(), tmp_path / "cache")
    assert skipped == expected["skipped"]
    written = {path.relative_to(tmp_path / "cache").as_posix(): path
               for path in sorted((tmp_path / "cache").rglob("*")) if path.is_file()}
    assert sorted(written) == sorted(expected["files"])  # same entry paths, nothing more
    exact = _same_machine(golden)
    for relpath, path in written.items():
        data = path.read_bytes()
        if exact:
            assert hashlib.sha256(data).hexdigest() == expected["files"][relpath], relpath
        else:
            _assert_same_entry(data, (GOLDEN / "blobs" / f"{expected['files'][relpath]}.npy")
                               .read_bytes(), relpath)


def _assert_same_entry(data: bytes, reference: bytes, relpath: str) -> None:
    """Same `.npy` header and keys; vectors equal to float tolerance (another CPU's kernels)."""
    written = np.load(io.BytesIO(data), allow_pickle=False)
    expected = np.load(io.BytesIO(reference), allow_pickle=False)
    assert data[:128].split(b"\n")[0] == reference[:128].split(b"\n")[0], relpath
    assert written.dtype == expected.dtype and written.shape == expected.shape, relpath
    if expected.dtype.names:
        assert (written["key"] == expected["key"]).all(), relpath
        written, expected = written["vector"], expected["vector"]
    np.testing.assert_allclose(written, expected, rtol=1e-4, atol=1e-5, err_msg=relpath)
