"""The audit's few lines in the end-of-run summary, and its figures for other reports.

Pure Python on the audit.json document (no numpy), so the CLI can import it cheaply.
"""

from __future__ import annotations

from typing import Any, Optional

from retrainer.reports.format import percent

SHOWN = 3  # entries listed per kind; the rest are in audit.json


def audit_figures(document: dict[str, Any]) -> dict[str, Any]:
    """Counts an HTML or CI report needs from an audit.json document.

    Returns:
        {"exact_duplicate_groups", "exact_across_classes", "near_duplicate_groups",
         "leaking_groups", "leaked_test_images", "likely_mislabeled", "outliers": int,
         "test_accuracy", "leak_adjusted_test_accuracy": float or None, "warnings": [str]}
    """
    exact, near = document["exact_duplicates"], document["near_duplicates"]
    return {
        "exact_duplicate_groups": len(exact),
        "exact_across_classes": sum(len(set(group["labels"])) > 1 for group in exact),
        "near_duplicate_groups": len(near),
        "leaking_groups": sum(group["leak"] for group in exact + near),
        "leaked_test_images": len(document["leaked_test_images"]),
        "likely_mislabeled": len(document["likely_mislabeled"]),
        "outliers": len(document["outliers"]),
        "test_accuracy": document["test_accuracy"],
        "leak_adjusted_test_accuracy": document["leak_adjusted_test_accuracy"],
        "warnings": list(document["warnings"]),
    }


def audit_summary_lines(document: dict[str, Any], path: Optional[object] = None) -> list[str]:
    """The "Dataset audit" block of the end-of-run summary."""
    figures = audit_figures(document)
    lines = [f"Dataset audit{f' ({path})' if path else ''}:"]
    lines.append(f"  exact duplicates: {figures['exact_duplicate_groups']} groups "
                 f"({figures['exact_across_classes']} with conflicting labels); "
                 f"near-duplicates: {figures['near_duplicate_groups']} groups")
    lines.append(f"  leaks: {figures['leaking_groups']} groups span training and validation/test")
    if figures["leaked_test_images"]:
        lines.append(f"  leak-adjusted test accuracy = "
                     f"{percent(figures['leak_adjusted_test_accuracy'])} "
                     f"(N={document['leak_adjusted_test_count']}"
                     f"; {figures['leaked_test_images']} test images with a copy in training "
                     "left out)")
    lines.append(f"  likely mislabeled: {figures['likely_mislabeled']}"
                 + "".join(f"\n    {entry['path']}: {entry['label']} -> {entry['suggested']} "
                           f"({entry['score']:.2f})"
                           for entry in document["likely_mislabeled"][:SHOWN]))
    lines.append(f"  outliers: {figures['outliers']}"
                 + "".join(f"\n    {entry['path']} ({entry['score']:.1f})"
                           for entry in document["outliers"][:SHOWN]))
    lines += [f"  warning: {warning}" for warning in figures["warnings"]]
    return lines
