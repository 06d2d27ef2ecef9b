"""Writes a run's reports: the metrics file, the PNGs, the HTML report, a TensorBoard image.

Called by the pipeline at the end of every run, also when a quality gate failed (before the error
is raised), so a failure can be inspected. Each file is written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import struct
from typing import Any, Callable, Optional, Sequence

import numpy as np

from retrainer.cache.layout import picture_path
from retrainer.cache.memo import Memo, memo_key
from retrainer.data.split import TESTING
from retrainer.io.atomic import write_bytes_atomically, write_text_atomically
from retrainer.io.storage import AnyPath, is_url
from retrainer.reports.html import Section, render_page
from retrainer.reports.multi_label_sections import multi_label_run_sections
from retrainer.reports.options import ReportOptions
from retrainer.reports.plots import MATPLOTLIB_VERSION, confusion_matrix_png, training_curves_png
from retrainer.reports.sections import run_sections
from retrainer.training.events import EventFile

log = logging.getLogger(__name__)

CONFUSION_MATRIX_TAG = "confusion_matrix"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclasses.dataclass(frozen=True)
class Pictures:
    """The report's PNGs: the training curves (with an HTML report) and the confusion matrix
    (with an HTML report or TensorBoard summaries, when a split has images)."""

    training_curves: Optional[bytes]
    confusion_matrix: Optional[bytes]


def draw_pictures(options: ReportOptions, labels: Sequence[str], history: Sequence[Any],
                  solver: str, split_name: Optional[str], split: Any,
                  cache_root: Optional[AnyPath] = None) -> Pictures:
    """Draw the PNGs `write_reports` needs (about a second of matplotlib: the pipeline draws
    them on a thread while the exports and heat maps are made).

    Args:
        options: which reports are written.
        labels: class names.
        history: the training history (EvalPoint-like).
        solver: the head's solver ("sgd" or "lbfgs"), for the curves' axes.
        split_name / split: the headline split (`RetrainResult.headline`); None: no images.
        cache_root: a local --bottleneck_dir, where each picture is kept by what it shows (the
            code, matplotlib's version and the picture's data): a rerun that trains the same
            head on the same vectors draws nothing. None: always drawn.
    """
    confusion = None
    if split_name is not None and (options.report_html is not None
                                   or options.summaries_dir is not None):
        title = f"Confusion matrix ({'test' if split_name == TESTING else split_name} split, " \
                f"N={split.count})"
        matrix = np.asarray(split.confusion_matrix)
        confusion = _drawn(cache_root, ("confusion", title, tuple(labels), matrix.tolist()),
                           lambda: confusion_matrix_png(matrix, labels, title))
    curves = (_drawn(cache_root, ("curves", solver, tuple(history)),
                     lambda: training_curves_png(history, solver))
              if options.report_html is not None else None)
    return Pictures(curves, confusion)


def _drawn(cache_root: Optional[AnyPath], inputs: tuple[Any, ...],
           draw: Callable[[], bytes]) -> bytes:
    """`draw()`, or the PNG it gave before for the same `inputs` (see `draw_pictures`)."""
    return Memo(cache_root, picture_path).get(memo_key(MATPLOTLIB_VERSION, inputs), draw,
                                              lambda data: data.startswith(_PNG_SIGNATURE))


def write_reports(result: Any, options: ReportOptions,
                  extra_sections: Sequence[Section] = (),
                  pictures: Optional[Pictures] = None, metrics_file: bool = True) -> None:
    """Write every report of `result` (the run's RetrainResult).

    Args:
        result: the run's RetrainResult.
        options: where: the metrics file (JSON document), the HTML report (training_curves.png
            and confusion_matrix.png go next to it), and the TensorBoard folder, whose test/ (or
            validation/) run gets the confusion matrix as an image summary. None: not written.
        extra_sections: further report sections (e.g. a dataset audit), after the built-in ones.
        pictures: the PNGs, drawn already (`draw_pictures`); None: drawn here.
        metrics_file: also the metrics file (else `write_metrics_file` writes it later).
    """
    report_html, summaries_dir = options.report_html, options.summaries_dir
    paths = options.paths
    split_name, split = result.headline()
    if pictures is None:
        pictures = draw_pictures(options, result.labels, result.history,
                                 (result.head or {}).get("solver", "sgd"), split_name, split)
    confusion = pictures.confusion_matrix
    if report_html is not None:
        curves = pictures.training_curves
        assert curves is not None  # drawn whenever there is an HTML report
        write_bytes_atomically(paths["training_curves"], curves)
        if confusion is not None:
            write_bytes_atomically(paths["confusion_matrix"], confusion)
        built_in = (run_sections(result, curves, confusion) if result.multi_label is None
                    else multi_label_run_sections(result, curves))
        sections = [*built_in, *extra_sections]
        write_text_atomically(report_html, render_page("Retrain report", sections))
        log.info("Wrote the report %s", report_html)
    if summaries_dir is not None and confusion is not None:
        step = result.history[-1].step if result.history else 0
        _write_image_summary(summaries_dir / ("test" if split_name == TESTING else split_name),
                             confusion, step)
    if metrics_file:
        write_metrics_file(result, options)


def write_metrics_file(result: Any, options: ReportOptions) -> None:
    """The metrics file (`result.to_json()`), if asked; the pipeline writes it last, with the
    run's figures as they are then."""
    if options.metrics_file is not None:
        document = json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n"
        write_text_atomically(options.metrics_file, document)
        log.info("Wrote the metrics %s", options.metrics_file)


def _write_image_summary(folder: AnyPath, png: bytes, step: int) -> None:
    """The PNG as a TensorBoard image; the folder's previous event files are replaced (a local
    folder without TensorFlow: `training.events`)."""
    if not is_url(folder):
        # training replaces the train/ and validation/ event files itself
        events = EventFile(folder, replace=folder.name == "test")
        width, height = struct.unpack(">II", png[16:24])  # the PNG's IHDR
        events.image(CONFUSION_MATRIX_TAG, png, width, height, step)
        events.close()
        return
    import tensorflow as tf

    if folder.name == "test":  # training replaces the train/ and validation/ event files itself
        for old_events in folder.glob("events.out.tfevents.*"):
            old_events.unlink()
    writer = tf.summary.create_file_writer(str(folder))
    with writer.as_default(step=step):
        tf.summary.image(CONFUSION_MATRIX_TAG, tf.io.decode_png(png, channels=3)[tf.newaxis])
    writer.close()
