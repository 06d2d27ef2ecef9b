"""The report's built-in sections, from a run's RetrainResult and its PNG pictures.

Each function returns one `html.Section`; `run_sections` lists them in report order. Thumbnails of
misclassified images are decoded by retrainer.data.decoding (the decoder training used) at the size the
network saw them, so the gallery shows what the model was given.
"""

from __future__ import annotations

import html
import io
import logging
from collections.abc import Iterable, Sequence
from typing import Any, Callable, Optional

from PIL import Image

from retrainer.data.decoding import UnreadableImageError, load_image
from retrainer.data.split import SPLITS, TESTING, VALIDATION
from retrainer.reports.format import percent
from retrainer.reports.html import Section, paragraph, png_image, table

log = logging.getLogger(__name__)

MAX_GALLERY_IMAGES = 60
MAX_SKIPPED_ROWS = 200
THUMBNAIL_SIZE = (112, 112)


_CURVES_NOTES = {
    "sgd": "Validation points are retrain.py's sampled batches; the final whole-split figures are "
           "in the summary.",
    "lbfgs": "One point per L2 strength tried, at its L-BFGS iteration count, on the whole "
             "training and validation splits; the summary has the chosen strength's figures.",
}


def run_sections(result: Any, curves_png: bytes, confusion_png: Optional[bytes]) -> list[Section]:
    """Summary, dataset, training curves, confusion matrix, per-class table, gallery (a
    multi-label run's: `multi_label_sections.multi_label_run_sections`)."""
    return [
        summary_section(result),
        dataset_section(result),
        Section("training", "Training curves", png_image(curves_png, "Training curves")
                + paragraph(_CURVES_NOTES[(result.head or {}).get("solver", "sgd")], "note")),
        confusion_section(result, confusion_png),
        per_class_section(result),
        gallery_section(result),
    ]


def summary_section(result: Any) -> Section:
    rows = []
    for name, split in ((TESTING, result.test_metrics), (VALIDATION, result.validation_metrics)):
        top_k = "n/a" if split.top_k is None else f"top-{split.top_k} {percent(split.top_k_accuracy)}"
        rows.append((name, split.count, percent(split.accuracy),
                     percent(split.balanced_accuracy), top_k))
    body = table(("split", "images", "accuracy", "balanced accuracy", "top-k"), rows)
    body += paragraph(f"Extractor {result.extractor['name']} ({result.extractor['id']}); "
                      f"{len(result.labels)} classes; {result.seconds['total']:.1f} s from the "
                      "run's start to this report (the summary's Took adds writing the reports "
                      "and the exit).")
    for gate in result.quality_gates:
        verdict = "PASSED" if gate.passed else "FAILED"
        text = (f"{verdict}: --{gate.flag} {gate.threshold:g} "
                f"(reached {percent(gate.value)}"
                + (f", class {gate.label}" if gate.label else "") + ")")
        body += paragraph(text, "pass" if gate.passed else "fail")
    return Section("summary", "Summary", body)


def dataset_section(result: Any) -> Section:
    rows = [(label, *(result.counts[label][split] for split in SPLITS),
             sum(result.counts[label].values())) for label in result.labels]
    sizes = result.images_per_split()
    totals = [sizes[split] for split in SPLITS]
    multi_label = result.multi_label is not None
    rows.append(("images" if multi_label else "total", *totals, sum(totals)))
    body = paragraph("Images used per label and split (decodable images only; an image counts "
                     "for each of its labels):" if multi_label else
                     "Images used per class and split (decodable images only):")
    body += table(("label" if multi_label else "class", *SPLITS, "all"), rows)
    if result.skipped:
        body += paragraph(f"Skipped {len(result.skipped)} files:")
        body += table(("file", "reason"), result.skipped[:MAX_SKIPPED_ROWS])
        if len(result.skipped) > MAX_SKIPPED_ROWS:
            body += paragraph(f"... and {len(result.skipped) - MAX_SKIPPED_ROWS} more in the "
                              "metrics file.", "note")
    else:
        body += paragraph("No files were skipped.")
    return Section("dataset", "Dataset", body)


def confusion_section(result: Any, confusion_png: Optional[bytes]) -> Section:
    _, split = result.headline()
    if confusion_png is None:
        return Section("confusion", "Confusion matrix",
                       paragraph("No test or validation images: nothing to show."))
    body = png_image(confusion_png, "Confusion matrix")
    pairs = [(result.labels[true], result.labels[predicted], count)
             for true, predicted, count in split.most_confused()]
    if pairs:
        body += paragraph("Most confused (true → predicted):")
        body += table(("true", "predicted", "images"), pairs)
    return Section("confusion", "Confusion matrix", body)


def per_class_section(result: Any) -> Section:
    body = split_tables(
        ((TESTING, result.test_metrics), (VALIDATION, result.validation_metrics)),
        ("class", "precision", "recall", "F1", "support"),
        lambda split: [(label, percent(row.precision), percent(row.recall), percent(row.f1),
                        row.support) for label, row in zip(result.labels, split.per_class)])
    return Section("per-class", "Per-class metrics", body)


def split_tables(splits: Iterable[tuple[str, Any]], header: Sequence[str],
                 rows: Callable[[Any], Iterable[Sequence[object]]]) -> str:
    """Per split (name, metrics): "<Name> split, N=..." and its table, or "No <name> images."."""
    body = ""
    for name, split in splits:
        if not split.count:
            body += paragraph(f"No {name} images.")
            continue
        body += paragraph(f"{name.capitalize()} split, N={split.count}:")
        body += table(header, rows(split))
    return body


def gallery_section(result: Any) -> Section:
    images = result.misclassified
    return gallery(
        "misclassified", "Misclassified test images", images,
        f"{len(images)} misclassified test images (thumbnails squared, as the network saw them; "
        "score = predicted probability).", "No test image was misclassified.",
        lambda image: f"predicted: {html.escape(image.predicted_label)} ({image.score:.2f})")


def gallery(section_id: str, title: str, images: Any, intro: str, empty: str,
            predicted: Callable[[Any], str]) -> Section:
    """A section of thumbnails of `images` (MisclassifiedImage), captioned with the file, its
    true label and `predicted(image)`; at most MAX_GALLERY_IMAGES, the rest in the metrics file."""
    if not images:
        return Section(section_id, title, paragraph(empty))
    figures = []
    for image in images[:MAX_GALLERY_IMAGES]:
        caption = (f"{html.escape(image.relpath)}<br>true: {html.escape(image.true_label)}<br>"
                   f"{predicted(image)}")
        figures.append(f"<figure>{thumbnail_image(image.path, image.relpath)}"
                       f"<figcaption>{caption}</figcaption></figure>")
    body = paragraph(intro)
    body += '<div class="gallery">\n' + "\n".join(figures) + "\n</div>"
    if len(images) > MAX_GALLERY_IMAGES:
        body += paragraph(f"... and {len(images) - MAX_GALLERY_IMAGES} more in the metrics file.",
                          "note")
    return Section(section_id, title, body)


def thumbnail_image(path: Any, relpath: str, css_class: str = "thumbnail") -> str:
    """An <img> of the image at `path`, decoded as training decodes it, 112x112 (or a note)."""
    try:
        pixels = load_image(path, THUMBNAIL_SIZE)
    except UnreadableImageError as error:  # e.g. deleted since training
        log.warning("Report: no thumbnail for %s: %s", relpath, error.reason)
        return paragraph(f"(unreadable: {error.reason})", "note")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)  # as the heat maps: faster
    return png_image(buffer.getvalue(), relpath, css_class)
