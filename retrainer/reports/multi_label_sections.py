"""The report's sections for a multi-label run: headline figures, per-label metrics, examples.

They replace the single-label confusion matrix, per-class table and gallery: each label
with its threshold, precision, recall, F1, average precision and support on the test and
validation splits, and test images whose predicted label set differs from the true one.
"""

from __future__ import annotations

import html
from typing import Any

from retrainer.reports.format import percent
from retrainer.reports.html import Section, paragraph, png_image, table
from retrainer.reports.sections import dataset_section, gallery, split_tables, summary_section


def multi_label_run_sections(result: Any, curves_png: bytes) -> list[Section]:
    """Summary, dataset, training curves, per-label metrics, test images with wrong label sets."""
    return [summary_section(result), dataset_section(result),
            Section("training", "Training curves", png_image(curves_png, "Training curves")),
            multi_label_section(result), examples_section(result)]

def multi_label_section(result: Any) -> Section:
    evaluation = result.multi_label
    body = paragraph("Each label is predicted when its probability reaches its threshold, "
                     "chosen on the validation split for the best F1 of that label (or set with "
                     "--multi_label_threshold); the test split never takes part in the choice.")
    body += table(("split", "images", "micro-F1", "macro-F1", "mAP", "exact match"), [
        (name, split.count, percent(split.micro_f1), percent(split.macro_f1),
         percent(split.mean_average_precision), percent(split.exact_match))
        for name, split in (("testing", evaluation.test), ("validation", evaluation.validation))])
    body += split_tables(
        (("test", evaluation.test), ("validation", evaluation.validation)),
        ("label", "threshold", "precision", "recall", "F1", "AP", "support"),
        lambda split: [(label, f"{threshold:.3f}", percent(row.precision), percent(row.recall),
                        percent(row.f1), percent(row.average_precision), row.support)
                       for label, threshold, row in zip(result.labels, split.thresholds,
                                                        split.per_class)])
    return Section("multi-label", "Per-label metrics", body)


def examples_section(result: Any) -> Section:
    images = result.misclassified
    return gallery(
        "examples", "Test images with a wrong label set", images,
        f"{len(images)} test images whose predicted labels differ from their true labels "
        "(thumbnails as the network saw them).", "Every test image got exactly its labels.",
        lambda image: f"predicted: {html.escape(image.predicted_label or '(none)')}")
