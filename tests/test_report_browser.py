"""The HTML report in a real browser (Debian's headless Chromium): it renders with no console
errors and the screenshot shows the pictures. Slow: a real EfficientNet-Lite0 run on Fashion-MNIST.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from retrainer.cli.retrain import main
from tests.fixtures_pipeline import retrain_args

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WIDTH, HEIGHT = 1200, 5200
TAB_BLUE, TAB_ORANGE = (31, 119, 180), (255, 127, 14)  # matplotlib's train/validation lines
DARKEST_BLUES = (8, 48, 107)  # the "Blues" colormap's top: the confusion matrix's diagonal


def screenshot(page: Path, out: Path, profile: Path) -> tuple[np.ndarray, list[str]]:
    """Render `page` headless; returns the RGB screenshot uint8 [H, W, 3] and console lines."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (scripts/setup.sh installs it with apt-get where "
                    "it can: apt-get install -y chromium)")
    process = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
         "--hide-scrollbars", f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={out}",
         page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert process.returncode == 0, process.stderr[-2000:]
    console = [line for line in process.stderr.splitlines() if ":CONSOLE" in line]
    return np.asarray(Image.open(out).convert("RGB")), console


def pixels_near(image: np.ndarray, color: tuple[int, int, int], tolerance: int = 12) -> int:
    return int((np.abs(image.astype(int) - color).max(axis=-1) <= tolerance).sum())


def test_console_errors_are_caught(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><p>x</p><script>console.error("broken page")</script>')
    _, console = screenshot(page, tmp_path / "broken.png", tmp_path / "profile")
    assert any("broken page" in line for line in console)


def test_fashion_mnist_report_renders_with_its_pictures(tmp_path, fashion_mnist_dir):
    args = retrain_args(tmp_path, fashion_mnist_dir, "--testing_percentage", "20",
                        extractor="efficientnet_lite0", steps=500)
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    report = tmp_path / "out" / "report.html"
    image, console = screenshot(report, tmp_path / "report.png", tmp_path / "profile")
    assert console == []
    assert image.shape == (HEIGHT, WIDTH, 3)
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colours) > 1000, "a page of text and tables alone has a few hundred colours"
    assert pixels_near(image, TAB_BLUE) > 500 and pixels_near(image, TAB_ORANGE) > 500  # curves
    assert pixels_near(image, DARKEST_BLUES, 25) > 2000  # filled confusion-matrix cells
    wrong = len(json.loads((tmp_path / "out" / "metrics.json").read_text())["misclassified"])
    assert wrong > 0
    # Fashion-MNIST's black backgrounds: over a quarter of each 112x112 thumbnail shown.
    assert pixels_near(image, (0, 0, 0), 8) > min(wrong, 60) * 112 * 112 // 4
