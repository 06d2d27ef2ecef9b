"""Benchmark data: real Fashion-MNIST images as class folders, one loader for every benchmark.

The idx files come from Debian's `dataset-fashion-mnist` (scripts/fetch_fashion_mnist.sh, run here
when they are missing); examples/fashion_mnist.py turns them into `<class>/<subset>_<index>.png`.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
FASHION_MNIST_ENV = "RETRAINER_FASHION_MNIST"


@functools.cache
def fashion_mnist_module() -> ModuleType:
    """examples/fashion_mnist.py, imported by path (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("retrainer_examples_fashion_mnist",
                                                  REPO / "examples" / "fashion_mnist.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fashion_mnist_idx_dir() -> Path:
    """The folder of the four idx .gz files ($RETRAINER_FASHION_MNIST or .cache/fashion-mnist),
    fetched from Debian's package first if any is missing."""
    folder = Path(os.environ.get(FASHION_MNIST_ENV, REPO / ".cache" / "fashion-mnist"))
    names = [name for pair in fashion_mnist_module().IDX_FILES.values() for name in pair]
    if not all((folder / name).is_file() for name in names):
        subprocess.run(["bash", str(REPO / "scripts" / "fetch_fashion_mnist.sh"), str(folder)],
                       check=True)
    return folder


def fashion_mnist_folder(out: str | os.PathLike[str], per_class: int, subset: str = "train",
                         size: int = 28, image_format: str = "png") -> Path:
    """`out`/<class>/<subset>_<index>.<format>: the first `per_class` images of each of the 10
    classes (28x28 grey, or resized to `size`). Reused when `out` was built with the same settings.

    Returns:
        The dataset folder, absolute.
    """
    return fashion_mnist_module().write_image_folder(fashion_mnist_idx_dir(), out, per_class,
                                                     subset, size, image_format)


def fashion_mnist_files(out: str | os.PathLike[str], per_class: int,
                        subset: str = "train") -> list[Path]:
    """The image files of `fashion_mnist_folder(out, per_class, subset)`, sorted."""
    return sorted(fashion_mnist_folder(out, per_class, subset).rglob("*.png"))
