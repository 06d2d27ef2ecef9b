"""Report pictures as PNG bytes, drawn by matplotlib's non-interactive Agg canvas.

`Figure` objects are used directly (no pyplot), so no global figure state or GUI backend is
involved and nothing needs a display. The same bytes become the PNG files and the report's images.
"""

from __future__ import annotations

import functools
import importlib.metadata
import io
import re
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:  # imported where a picture is drawn: a rerun reads its kept pictures
    from matplotlib.figure import Figure

_DPI = 100
_LABEL_CHARACTERS = 32  # of a class name on an axis (the HTML report shows it whole)
_MAX_NAMED = 60  # classes whose names fit on a confusion matrix's axes
MATPLOTLIB_VERSION = importlib.metadata.version("matplotlib")  # in the keys of kept pictures
# The training curves' panels in the figure (fractions): room for 6-character tick labels, the
# titles above and the x labels below.
_CURVES_MARGINS = {"left": 0.06, "right": 0.985, "bottom": 0.13, "top": 0.92, "wspace": 0.16}



def training_curves_png(history: Sequence[Any], solver: str = "sgd") -> bytes:
    """Accuracy and cross-entropy against step, train and validation (two panels).

    Args:
        history: EvalPoint-like objects (step, train_accuracy, cross_entropy,
            validation_accuracy, validation_cross_entropy; validation_* may be None).
        solver: "sgd" (points at steps, validation on a sampled batch) or "lbfgs" (one point
            per L2 strength of the path, at its L-BFGS iteration count, on the whole splits).

    Returns:
        PNG bytes (of `training_curves_figure`).
    """
    return _png(training_curves_figure(history, solver))


def training_curves_figure(history: Sequence[Any], solver: str = "sgd") -> Figure:
    """The figure `training_curves_png` draws: its x axes count steps or iterations, so their
    ticks are whole numbers however few the points."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    # Fixed margins: what the panels hold is known (short tick numbers, one-line titles and axis
    # labels, legends inside), so no layout engine has to measure every artist first (a third
    # of the picture's drawing time).
    figure = Figure(figsize=(10, 4), dpi=_DPI)
    figure.subplots_adjust(**_CURVES_MARGINS)
    steps = [point.step for point in history]
    panels = (
        ("Accuracy", "train_accuracy", "validation_accuracy"),
        ("Cross-entropy", "cross_entropy", "validation_cross_entropy"),
    )
    # Points marked when they are few or far apart (one L2 strength: a lone point, else unseen).
    marker = "o" if solver == "lbfgs" or len(steps) < 2 else None
    for axes, (title, train_key, validation_key) in zip(figure.subplots(1, 2), panels):
        axes.plot(steps, [getattr(point, train_key) for point in history], marker=marker,
                  label="train")
        validation = [(point.step, getattr(point, validation_key)) for point in history
                      if getattr(point, validation_key) is not None]
        if validation:
            axes.plot(*zip(*validation), marker=marker,
                      label="validation (sampled batch)" if solver == "sgd"
                      else "validation (whole split)")
        axes.set_title(title)
        axes.set_xlabel("step" if solver == "sgd" else "L-BFGS iterations (a point per L2 strength)")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        axes.grid(alpha=0.3)
        axes.legend()
    return figure


def confusion_matrix_png(matrix: np.ndarray, labels: Sequence[str], title: str) -> bytes:
    """A heatmap of the confusion matrix with each cell's count written in it.

    Args:
        matrix: int [C, C], rows = true class, columns = predicted.
        labels: C class names.
        title: e.g. "Confusion matrix (test split, N=100)".

    Returns:
        PNG bytes.
    """
    # Grows with the classes up to 24 inches (2,400 pixels): at 1,000 classes the uncapped
    # figure was 55,000 pixels square. Beyond _MAX_NAMED classes the axes show class indices.
    size = min(max(4.0, 0.55 * len(labels) + 2.5), 24.0)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(size + 1, size), dpi=_DPI, layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues", vmin=0, interpolation="nearest")
    figure.colorbar(image, ax=axes, shrink=0.8)
    if len(labels) <= _MAX_NAMED:
        ticks = np.arange(len(labels))
        names = [_axis_label(label) for label in labels]
        axes.set_xticks(ticks, names, rotation=45, ha="right")
        axes.set_yticks(ticks, names)
    axes.set_xlabel("predicted" if len(labels) <= _MAX_NAMED else "predicted (class index)")
    axes.set_ylabel("true" if len(labels) <= _MAX_NAMED else "true (class index)")
    figure.suptitle(title)  # centred on the figure: long class names push the axes aside
    if len(labels) <= 30:  # beyond that the numbers no longer fit in the cells
        threshold = matrix.max() / 2 if matrix.size else 0
        for (true, predicted), count in np.ndenumerate(matrix):
            if count:
                axes.text(predicted, true, str(count), ha="center", va="center", fontsize=8,
                          color="white" if count > threshold else "black")
    return _png(figure)


def load_matplotlib() -> None:
    """Import what drawing a picture needs and read the default font's characters (~0.35 s):
    what `retrainer.reports.painter` does ahead, on an idle core."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    from matplotlib.figure import Figure  # noqa: F401

    _font_characters()


def _axis_label(label: str) -> str:
    """`label` as the plot's font can draw it: a character it lacks (CJK, emoji) as U+XXXX
    rather than an empty box and a warning; a long name shortened."""
    drawable = _font_characters()
    text = re.sub(r"(?<=[0-9A-F])U\+", " U+",  # "U+73AB U+7470", not "U+73ABU+7470"
                  "".join(char if ord(char) in drawable else f"U+{ord(char):04X}"
                          for char in label))
    return text if len(text) <= _LABEL_CHARACTERS else text[:_LABEL_CHARACTERS - 1] + "…"


@functools.lru_cache(maxsize=1)
def _font_characters() -> frozenset[int]:
    """The code points the default font draws."""
    from matplotlib import font_manager, ft2font, rcParams

    path = font_manager.findfont(font_manager.FontProperties(family=rcParams["font.family"]))
    return frozenset(ft2font.FT2Font(path).get_charmap())


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    # zlib level 1, as the heat maps: a third of level 6's encoding time, files ~20 % larger
    FigureCanvasAgg(figure).print_png(  # type: ignore[no-untyped-call]
        buffer, pil_kwargs={"compress_level": 1})
    return buffer.getvalue()
