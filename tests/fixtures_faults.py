"""Bad inputs with their expected outcomes, and real-process helpers, for the fault tests.

- `CORPUS_USED` / `CORPUS_SKIPPED`: what `retrain` must do with each file `write_decode_corpus`
  (tests/fixtures_data.py) writes: use it, or skip it with this reason. `RENAMED_USED`: corpus
  files copied under a lying extension (used: the content decides). `write_fault_corpus` writes all.
- `save_slow_module(path, ...)`: a local TF2 SavedModel extractor that burns a fixed amount of CPU
  per batch, so a real `retrain` process can be interrupted in the middle of extraction on purpose
  (a subprocess cannot see the in-process `tiny_test` registration; `--tfhub_module PATH` it can).
- `start_retrain(...)`, `wait_until(...)`, `cache_entries(...)`, `assert_complete_graph(...)`.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest

from retrainer.cache._packs import PackReader
from retrainer.cache.layout import MIRRORED_SUBFOLDER, entry_key

REPO_ROOT = Path(__file__).resolve().parents[1]

# Awkward files that decode: used for training (pixels checked in tests/test_images.py).
CORPUS_USED = (
    "rgb.jpg", "rgb.png", "png_named.jpg", "upper_case.JPG", "grey.png", "bilevel.bmp",
    "sixteen_bit.png", "float.tiff", "cmyk.jpg", "rgba.png", "palette_transparent.png", "la.png",
    "animated.gif", "animated.webp", "exif_rotated.jpg",
)
# Extension lies: {new name: corpus file whose bytes it gets}. The content decides the format
# (tensorflow#48556: an animated GIF named .jpg broke retrain.py with "Not a JPEG file").
RENAMED_USED = {"gif_named.jpg": "animated.gif", "jpeg_named.png": "rgb.jpg",
                "webp_named.JPEG": "animated.webp"}
# Files that cannot be used: skipped with this reason (decoder) or left out by discovery (fork).
CORPUS_SKIPPED = {
    "empty.jpg": "empty file (0 bytes)",
    "empty.png": "empty file (0 bytes)",
    "truncated.jpg": "truncated or corrupt image data",
    "truncated.png": "truncated or corrupt image data",
    "text.jpg": "not an image (a text file)",
    "html.jpg": "not an image (an HTML page)",
    "binary_junk.png": "not an image (unrecognised file format)",
    "bomb.png": "too large to decode safely",
    "bomb_moderate.png": "too large to decode safely",
    "._IMG_0001.jpg": "macOS resource fork",
}
DISCOVERY_SKIPPED = frozenset({"._IMG_0001.jpg"})  # never opened, so never "Skipping ..." warned
INTERRUPTED_MESSAGE = "Interrupted; work done so far is kept (rerun to resume)."
SLOW_MODULE_SIZE = 32  # input height and width of `save_slow_module` modules
SLOW_MODULE_VECTOR = 8


def write_fault_corpus(folder: Path) -> dict[str, Path]:
    """`write_decode_corpus(folder)` plus the `RENAMED_USED` copies; returns {name: path}."""
    from tests.fixtures_data import write_decode_corpus

    corpus = write_decode_corpus(folder)
    for name, source in RENAMED_USED.items():
        corpus[name] = folder / name
        corpus[name].write_bytes(corpus[source].read_bytes())
    return corpus


def save_slow_module(path: Path, iterations: int = 200, width: int = 512,
                     padding_floats: int = 0) -> Path:
    """Write a TF2 SavedModel feature extractor: float32 [N, 32, 32, 3] -> float32 [N, 8].

    The features are a 1x1 convolution's mean (as tests/fixtures_hub.py) plus a negligible term from
    `iterations` [N, width] x [width, width] matmuls, which makes each batch take a fixed time
    (~0.1 s for 32 images at the defaults). `padding_floats` adds a constant of that many floats to
    the graph, so the exported .pb is big and takes a while to write.
    """
    import tensorflow as tf

    rng = np.random.default_rng(0)
    module = tf.Module()
    module.kernel = tf.Variable(rng.normal(size=(1, 1, 3, SLOW_MODULE_VECTOR)).astype(np.float32))
    module.mix = tf.Variable((rng.normal(size=(SLOW_MODULE_VECTOR, width)) / 8).astype(np.float32))
    square = rng.normal(size=(width, width)) / np.sqrt(width)
    module.square = tf.Variable(square.astype(np.float32))
    module.padding = tf.Variable(np.ones(max(padding_floats, 1), np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, SLOW_MODULE_SIZE, SLOW_MODULE_SIZE, 3],
                                                tf.float32)])
    def features(images):
        pooled = tf.reduce_mean(tf.nn.conv2d(images, module.kernel, 1, "SAME"), axis=[1, 2])
        hidden = tf.tanh(pooled @ module.mix)
        for _ in tf.range(iterations):
            hidden = tf.tanh(hidden @ module.square)
        return pooled + 1e-6 * (hidden[:, :SLOW_MODULE_VECTOR] + tf.reduce_mean(module.padding))

    module.__call__ = features
    tf.saved_model.save(module, str(path))
    return path


@pytest.fixture(scope="session")
def slow_module(tmp_path_factory) -> Path:
    """A local SavedModel extractor taking ~0.1 s per batch of 32 images."""
    return save_slow_module(tmp_path_factory.mktemp("slow_module") / "module")


def retrain_command(*args: object) -> list[str]:
    """The real `retrain` entry point, run by this Python (the repo need not be installed)."""
    return [sys.executable, "-m", "retrainer.cli.retrain", *map(str, args)]


def start_retrain(args: list[str], cwd: Path, max_file_bytes: Optional[int] = None
                  ) -> subprocess.Popen:
    """Start `retrain ARGS` in a subprocess; stdout and stderr are captured as text.

    `max_file_bytes` caps the size of any file it writes (RLIMIT_FSIZE): a full disk for any user.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}

    def prepare() -> None:
        # A suite started in the background by a shell without job control (`cmd &`, nohup)
        # inherits SIGINT ignored, and Python then never raises KeyboardInterrupt: Ctrl-C as a
        # user's terminal delivers it needs the default disposition back.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if max_file_bytes is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit: EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    return subprocess.Popen(retrain_command(*args), cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=prepare)


def wait_until(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 120,
               poll: float = 0.005) -> None:
    """Poll `condition` until true; fail if the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            _, stderr = process.communicate()
            pytest.fail(f"retrain ended (exit {process.returncode}) before the kill point:\n"
                        f"{stderr}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"kill point not reached within {timeout} s")
        time.sleep(poll)


def cache_entries(bottleneck_dir: Path) -> list[Path]:
    """Every cache entry of the images' own vectors (whole `.npy` files; temp files end in
    `.tmp`), not those of --tta auto's mirrored validation images."""
    return sorted(path for path in bottleneck_dir.rglob("*.npy")
                  if MIRRORED_SUBFOLDER not in path.relative_to(bottleneck_dir).parts)


def own_file(entry: Path) -> Path:
    """Give `entry` a file of its own (a batch's entries share one), so damage hits it alone."""
    data = entry.read_bytes()
    entry.unlink()
    entry.write_bytes(data)
    return entry


def read_entry(path: Path) -> np.ndarray:
    """The array one cache entry file holds (its row of a pack, or a plain `.npy`), unchecked."""
    with open(path, "rb") as stream:
        return PackReader().read(stream, entry_key(path))


def assert_whole_entries(bottleneck_dir: Path, vector_size: int) -> int:
    """Every cache entry is a finite float32 [vector_size] vector; returns how many there are."""
    entries = cache_entries(bottleneck_dir)
    for entry in entries:
        vector = read_entry(entry)
        assert vector.dtype == np.float32 and vector.shape == (vector_size,), entry
        assert np.isfinite(vector).all(), entry
    return len(entries)


def assert_complete_graph(path: Path, final_tensor_name: str = "final_result") -> bytes:
    """`path` is a whole GraphDef with the export's input and output ops; returns its bytes."""
    import tensorflow as tf

    data = path.read_bytes()
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(data)
    names = {node.name for node in graph_def.node}
    assert {"Placeholder", final_tensor_name} <= names, f"{path} lacks the export's ops"
    return data


def temp_files(folder: Path) -> list[Path]:
    """Leftover temporary files of atomic writes below `folder`."""
    return sorted(path for path in folder.rglob(".*") if path.name.endswith(".tmp"))


def find_line(text: str, prefix: str) -> Optional[str]:
    """The first line of `text` starting with `prefix`, or None."""
    return next((line for line in text.splitlines() if line.startswith(prefix)), None)
