"""Report pictures as PNG bytes, drawn by matplotlib's non-interactive Agg canvas.

`Figure` objects are used directly (no pyplot), so no global figure state or GUI backend is
involved and nothing needs a display. The same bytes become the PNG files and the report's images.
"""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_DPI = 100


def training_curves_png(history: Sequence[Any]) -> bytes:
    """Accuracy and cross-entropy against step, train and validation (two panels).

    Args:
        history: EvalPoint-like objects (step, train_accuracy, cross_entropy,
            validation_accuracy, validation_cross_entropy; validation_* may be None).

    Returns:
        PNG bytes.
    """
    figure = Figure(figsize=(10, 4), dpi=_DPI, layout="constrained")
    steps = [point.step for point in history]
    panels = (
        ("Accuracy", "train_accuracy", "validation_accuracy"),
        ("Cross-entropy", "cross_entropy", "validation_cross_entropy"),
    )
    for axes, (title, train_key, validation_key) in zip(figure.subplots(1, 2), panels):
        axes.plot(steps, [getattr(point, train_key) for point in history], label="train")
        validation = [(point.step, getattr(point, validation_key)) for point in history
                      if getattr(point, validation_key) is not None]
        if validation:
            axes.plot(*zip(*validation), label="validation (sampled batch)")
        axes.set_title(title)
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
        axes.legend()
    return _png(figure)


def confusion_matrix_png(matrix: np.ndarray, labels: Sequence[str], title: str) -> bytes:
    """A heatmap of the confusion matrix with each cell's count written in it.

    Args:
        matrix: int [C, C], rows = true class, columns = predicted.
        labels: C class names.
        title: e.g. "Confusion matrix (test split, N=100)".

    Returns:
        PNG bytes.
    """
    size = max(4.0, 0.55 * len(labels) + 2.5)
    figure = Figure(figsize=(size + 1, size), dpi=_DPI, layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues", vmin=0)
    figure.colorbar(image, ax=axes, shrink=0.8)
    ticks = np.arange(len(labels))
    axes.set_xticks(ticks, labels, rotation=45, ha="right")
    axes.set_yticks(ticks, labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    if len(labels) <= 30:  # beyond that the numbers no longer fit in the cells
        threshold = matrix.max() / 2 if matrix.size else 0
        for (true, predicted), count in np.ndenumerate(matrix):
            if count:
                axes.text(predicted, true, str(count), ha="center", va="center", fontsize=8,
                          color="white" if count > threshold else "black")
    return _png(figure)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)  # type: ignore[no-untyped-call]
    return buffer.getvalue()
