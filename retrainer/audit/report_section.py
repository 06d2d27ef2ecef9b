"""The audit's section of the HTML report: counts per kind, leak-adjusted accuracy, thumbnails.

Built from the audit.json document (docs/audit.md), so the report shows exactly what the file
says. Paths come from the dataset, so every caption goes through `html.escape`; thumbnails are
decoded as training decodes them and embedded as PNG data URIs.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Optional

from retrainer.audit.summary import audit_figures
from retrainer.reports.format import percent
from retrainer.reports.html import Section, paragraph, table
from retrainer.reports.sections import thumbnail_image

SHOWN_GROUPS = 8  # duplicate groups with thumbnails, leaks first; the rest are in audit.json
SHOWN_IMAGES = 12  # likely mislabeled images and outliers with thumbnails


def audit_sections(document: Optional[dict[str, Any]]) -> tuple[Section, ...]:
    """The report's "Dataset audit" section, or none with --skip_audit (document None)."""
    if document is None:
        return ()
    figures = audit_figures(document)
    image_dir = Path(document["image_dir"])
    body = table(("finding", "count"), [
        ("exact duplicate groups", figures["exact_duplicate_groups"]),
        ("... with conflicting labels", figures["exact_across_classes"]),
        ("near-duplicate groups", figures["near_duplicate_groups"]),
        ("groups leaking across splits", figures["leaking_groups"]),
        ("test images with a copy in training", figures["leaked_test_images"]),
        ("likely mislabeled images", figures["likely_mislabeled"]),
        ("outliers", figures["outliers"]),
    ])
    body += table(("test accuracy", "leak-adjusted test accuracy", "leak-adjusted N"), [(
        percent(figures["test_accuracy"]), percent(figures["leak_adjusted_test_accuracy"]),
        document["leak_adjusted_test_count"])])
    body += "".join(paragraph(f"Warning: {warning}", "fail") for warning in figures["warnings"])
    body += _groups(document, image_dir)
    body += _gallery("Likely mislabeled (score = 1 − out-of-fold probability of the label)",
                     [(entry["path"], f"{entry['label']} → {entry['suggested']} "
                                      f"({entry['score']:.2f})")
                      for entry in document["likely_mislabeled"]], image_dir)
    body += _gallery("Outliers (score = IQRs above the class's median neighbour distance)",
                     [(entry["path"], f"{entry['label']} ({entry['score']:.1f})")
                      for entry in document["outliers"]], image_dir)
    body += paragraph("Every finding is listed in the audit file (docs/audit.md).", "note")
    return (Section("audit", "Dataset audit", body),)


def _groups(document: dict[str, Any], image_dir: Path) -> str:
    """Thumbnails of the first duplicate groups, leaks first, one gallery per group."""
    groups = ([("exact", group) for group in document["exact_duplicates"]]
              + [("near", group) for group in document["near_duplicates"]])
    groups.sort(key=lambda kind_group: not kind_group[1]["leak"])  # stable: leaks first
    parts = []
    for kind, group in groups[:SHOWN_GROUPS]:
        title = (f"{'Leak: ' if group['leak'] else ''}{kind} duplicates"
                 + (f", similarity {group['similarity']:.3f}" if kind == "near" else ""))
        parts.append(_gallery(title, [(path, f"{label}, {split}") for path, label, split in
                                      zip(group["paths"], group["labels"], group["splits"])],
                              image_dir, limit=None))
    if len(groups) > SHOWN_GROUPS:
        parts.append(paragraph(f"... and {len(groups) - SHOWN_GROUPS} more duplicate groups.",
                               "note"))
    return "".join(parts)


def _gallery(title: str, entries: list[tuple[str, str]], image_dir: Path,
             limit: Optional[int] = SHOWN_IMAGES) -> str:
    """A titled gallery of (relative path, caption) thumbnails; empty when there are none."""
    if not entries:
        return ""
    shown = entries if limit is None else entries[:limit]
    figures = "\n".join(
        f"<figure>{thumbnail_image(image_dir / relpath, relpath, 'audit')}<figcaption>"
        f"{html.escape(relpath)}<br>{html.escape(caption)}</figcaption></figure>"
        for relpath, caption in shown)
    more = (paragraph(f"... and {len(entries) - len(shown)} more.", "note")
            if len(entries) > len(shown) else "")
    return paragraph(title) + f'<div class="gallery">\n{figures}\n</div>' + more
