"""Fixtures for the retrain pipeline tests (bottlenecks, train, export, CLI).

- `fashion_subset_dir`: a few real Fashion-MNIST classes (copied from `fashion_mnist_dir`).
- `retrain_args(tmp_path, image_dir, ...)`: retrain flags with every output and the cache inside
  `tmp_path`, the fast `tiny_test` extractor and few steps.
- `interrupt_cache_writes_after(monkeypatch, count)`: Ctrl-C inside the cache writer once `count`
  entries are stored, to test resuming.
- `isolated_home`: HOME, XDG_CACHE_HOME and the working directory inside `tmp_path`, so runs with
  default paths never touch the real ones.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Sequence

import pytest

FASHION_CLASSES = ("Trouser", "Bag", "Sneaker", "Dress")


def copy_classes(source: Path, dest: Path, classes: Sequence[str], per_class: int) -> Path:
    """Copy the first `per_class` images (sorted) of each class folder in `classes`. Returns dest."""
    for name in classes:
        (dest / name).mkdir(parents=True, exist_ok=True)
        for path in sorted((source / name).iterdir())[:per_class]:
            shutil.copy(path, dest / name / path.name)
    return dest


def interrupt_cache_writes_after(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """Make the bottleneck cache raise KeyboardInterrupt (Ctrl-C) after storing `count` entries."""
    from retrainer.cache.entries import BottleneckCache

    real_store, real_store_all = BottleneckCache.store, BottleneckCache.store_all
    stored = []

    def store_then_interrupt(self, digest, vector):
        if len(stored) == count:
            raise KeyboardInterrupt
        real_store(self, digest, vector)
        stored.append(digest)

    def store_all_then_interrupt(self, entries):
        room = count - len(stored)
        real_store_all(self, entries[:room])
        stored.extend(key for key, _ in entries[:room])
        if len(entries) > room:
            raise KeyboardInterrupt

    monkeypatch.setattr(BottleneckCache, "store", store_then_interrupt)
    monkeypatch.setattr(BottleneckCache, "store_all", store_all_then_interrupt)


@pytest.fixture
def fashion_subset_dir(fashion_mnist_dir: Path, tmp_path: Path) -> Path:
    """Real images: 4 Fashion-MNIST classes x 25, 28x28 grayscale PNG, in a writable copy."""
    return copy_classes(fashion_mnist_dir, tmp_path / "fashion", FASHION_CLASSES, 25)


def retrain_args(
    tmp_path: Path, image_dir: Path, *extra: str, extractor: str = "tiny_test",
    steps: Optional[int] = 40,
) -> list[str]:
    """Flags for an isolated, fast `retrain` run; outputs go to tmp_path/out. steps=None: no
    --how_many_training_steps (the default lbfgs solver)."""
    out = tmp_path / "out"
    return [
        "--image_dir", str(image_dir),
        "--tfhub_module", extractor,
        "--bottleneck_dir", str(tmp_path / "bottlenecks"),
        "--output_graph", str(out / "graph.pb"),
        "--output_labels", str(out / "labels.txt"),
        "--summaries_dir", str(out / "logs"),
        "--checkpoint_path", str(out / "checkpoint" / "head"),
        "--intermediate_output_graphs_dir", str(out / "intermediate"),
        "--metrics_file", str(out / "metrics.json"),
        "--report_html", str(out / "report.html"),
        "--audit_file", str(out / "audit.json"),
        *(() if steps is None else ("--how_many_training_steps", str(steps))),
        *extra,
    ]


@pytest.fixture
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in tmp_path/work with HOME and XDG_CACHE_HOME inside tmp_path; returns the work dir."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg_cache"))
    monkeypatch.chdir(work)
    return work
