"""Which extractors Grad-CAM can explain: decided from the extractor's name alone, so a run can
tell without TensorFlow whether its report will have heat maps."""

from __future__ import annotations

import re

from retrainer.errors import UsageError

EXPLAINABLE = "the built-in EfficientNet-Lite models (efficientnet_lite0/1/2) and keras: backbones"
_EXPLAINABLE_NAME = re.compile(r"^(efficientnet_lite\d+|keras:.+)$", re.IGNORECASE)


def explainable(extractor: str | None) -> bool:
    """True for the extractors whose last block is a spatial map of the image (`EXPLAINABLE`)."""
    return extractor is not None and bool(_EXPLAINABLE_NAME.match(extractor))


def require_explainable(extractor: str | None, source: str) -> None:
    """Raise unless `extractor` (the name a graph's metadata records) can be explained.

    Raises:
        UsageError: naming the extractor and those that can be explained.
    """
    if not explainable(extractor):
        built = "an unknown extractor" if extractor is None else f"extractor {extractor!r}"
        raise UsageError(
            f"--explain: {source} was built on {built}; heat maps are made for {EXPLAINABLE}. "
            "Drop --explain, or retrain with one of them"
        )
