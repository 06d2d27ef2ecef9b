"""Engines that run an extractor at a chosen precision; `create_engine` is the one constructor.

    engine = create_engine(create_extractor("efficientnet_lite0"), "int8")
    vectors = engine(uint8_pixels)        # float32 [N, 1280]

Importing this package does not import TensorFlow (the config reads `PRECISIONS` and
`default_precision` from here); each engine's module loads on demand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

from retrainer.engines.base import AUTO, BFLOAT16, FLOAT32, INT8, INT8_MEASURED, PRECISIONS, Engine
from retrainer.engines.cpu import default_precision, usable_cpus
from retrainer.errors import UsageError

if TYPE_CHECKING:
    from retrainer.extractors import FeatureExtractor


def create_engine(extractor: "FeatureExtractor", precision: str = FLOAT32) -> Engine:
    """The engine running `extractor` at `precision`.

    Args:
        extractor: any FeatureExtractor.
        precision: one of PRECISIONS, or "auto" (`default_precision` for this extractor).

    Raises:
        UsageError: unknown precision, or one this extractor cannot be run at (exit 2).
    """
    if precision == AUTO:
        precision = default_precision(extractor.spec.name in INT8_MEASURED)
    if precision == FLOAT32:
        from retrainer.engines.float32 import Float32Engine

        return Float32Engine(extractor)
    if precision == BFLOAT16:
        from retrainer.engines.bfloat16 import BFloat16Engine

        return BFloat16Engine(extractor)
    if precision == INT8:
        from retrainer.engines.int8 import Int8Engine

        return Int8Engine(extractor, threads=usable_cpus())
    raise UsageError(f"--extractor_precision must be one of {[AUTO, *PRECISIONS]}. "
                     f"Received: {precision!r}.")


def as_engine(extractor_or_engine: Union["FeatureExtractor", Engine]) -> Engine:
    """An engine as is; an extractor wrapped in the float32 engine."""
    if isinstance(extractor_or_engine, Engine):
        return extractor_or_engine
    return create_engine(extractor_or_engine, FLOAT32)


__all__ = ["AUTO", "BFLOAT16", "FLOAT32", "INT8", "PRECISIONS", "Engine", "as_engine", "create_engine",
           "default_precision"]
