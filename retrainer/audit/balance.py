"""Audit detector: class imbalance and splits too thin for their accuracy to mean anything."""

from __future__ import annotations

from retrainer.data.split import TESTING, TRAINING, VALIDATION

IMBALANCE_RATIO = 5  # warn when the largest class has this many times the images of another
MIN_EVALUATION_IMAGES = 5  # below this, one image moves a class's accuracy by 20 points or more


def balance_warnings(counts: dict[str, dict[str, int]], validation_percentage: float,
                     testing_percentage: float) -> list[str]:
    """Warnings about rare classes and thin validation/test splits.

    Args:
        counts: {label: {split: images}}.
        validation_percentage, testing_percentage: the run's split shares (0 = split unused).

    Returns:
        One sentence per problem, in label order.
    """
    totals = {label: sum(row.values()) for label, row in counts.items()}
    largest_label = max(totals, key=lambda label: totals[label])
    warnings = []
    for label, total in totals.items():
        if total * IMBALANCE_RATIO < totals[largest_label]:
            warnings.append(
                f"Class {label!r} has {total} image{'' if total == 1 else 's'}, under "
                f"1/{IMBALANCE_RATIO} of "
                f"{largest_label!r} ({totals[largest_label]}): it will be predicted less reliably; "
                "add images of it."
            )
    for split, percentage in ((VALIDATION, validation_percentage), (TESTING, testing_percentage)):
        if percentage <= 0:
            continue
        thin = [label for label, row in counts.items()
                if row[TRAINING] and row[split] < MIN_EVALUATION_IMAGES]
        if thin:
            warnings.append(
                f"{len(thin)} class(es) have fewer than {MIN_EVALUATION_IMAGES} {split} images "
                f"({', '.join(repr(label) for label in thin[:5])}"
                f"{', ...' if len(thin) > 5 else ''}): their {split} accuracy is too noisy to "
                "mean much; add images or raise the percentage."
            )
    return warnings
