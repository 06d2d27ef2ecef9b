"""Writes a run's reports: the metrics file, the PNGs, the HTML report, a TensorBoard image.

Called by the pipeline at the end of every run, also when a quality gate failed (before the error
is raised), so a failure can be inspected. Each file is written atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from retrainer._files import write_bytes_atomically, write_text_atomically
from retrainer.reports.html import Section, render_page
from retrainer.reports.metrics_file import report_paths, write_metrics_file
from retrainer.reports.plots import confusion_matrix_png, training_curves_png
from retrainer.reports.sections import run_sections
from retrainer.split import TESTING

log = logging.getLogger(__name__)

CONFUSION_MATRIX_TAG = "confusion_matrix"


def write_reports(result: Any, metrics_file: Optional[Path], report_html: Optional[Path],
                  summaries_dir: Optional[Path], extra_sections: tuple[Section, ...] = ()) -> None:
    """Write every report of `result` (a RetrainResult with its `report`).

    Args:
        result: the run's RetrainResult.
        metrics_file: the JSON document's path (None: not written).
        report_html: the HTML report's path; training_curves.png and confusion_matrix.png go next
            to it (None: none of the three).
        summaries_dir: TensorBoard folder: the confusion matrix goes to its test/ (or validation/)
            run as an image summary (None: not written).
        extra_sections: further report sections (e.g. a dataset audit), after the built-in ones.
    """
    paths = report_paths(metrics_file, report_html)
    split_name, split = result.report.headline()
    confusion = None
    if split_name is not None and (report_html is not None or summaries_dir is not None):
        title = f"Confusion matrix ({'test' if split_name == TESTING else split_name} split, " \
                f"N={split.count})"
        confusion = confusion_matrix_png(split.confusion_matrix, result.labels, title)
    if report_html is not None:
        curves = training_curves_png(result.report.history,
                                     (result.head or {}).get("solver", "sgd"))
        write_bytes_atomically(paths["training_curves"], curves)
        if confusion is not None:
            write_bytes_atomically(paths["confusion_matrix"], confusion)
        sections = [*run_sections(result, curves, confusion), *extra_sections]
        write_text_atomically(report_html, render_page("Retrain report", sections))
        log.info("Wrote the report %s", report_html)
    if summaries_dir is not None and confusion is not None:
        step = result.report.history[-1].step if result.report.history else 0
        _write_image_summary(summaries_dir / ("test" if split_name == TESTING else split_name),
                             confusion, step)
    if metrics_file is not None:
        write_metrics_file(metrics_file, result.to_json())
        log.info("Wrote the metrics %s", metrics_file)


def _write_image_summary(folder: Path, png: bytes, step: int) -> None:
    """The PNG as a TensorBoard image; the folder's previous event files are replaced."""
    import tensorflow as tf

    if folder.name == "test":  # training replaces the train/ and validation/ event files itself
        for old_events in folder.glob("events.out.tfevents.*"):
            old_events.unlink()
    writer = tf.summary.create_file_writer(str(folder))
    with writer.as_default(step=step):
        tf.summary.image(CONFUSION_MATRIX_TAG, tf.io.decode_png(png, channels=3)[tf.newaxis])
    writer.close()
