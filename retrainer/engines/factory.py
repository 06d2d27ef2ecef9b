"""`create_engine`: the one constructor of engines (see the package docstring)."""

from __future__ import annotations

from typing import Union

from retrainer.engines.base import AUTO, BFLOAT16, FLOAT32, INT8, INT8_MEASURED, PRECISIONS, Engine
from retrainer.engines.bfloat16 import BFloat16Engine
from retrainer.engines.cpu import default_precision
from retrainer.engines.float32 import Float32Engine
from retrainer.engines.int8 import Int8Engine
from retrainer.engines.multi_device import has_gpu, resolve_devices
from retrainer.errors import UsageError
from retrainer.extractors import FeatureExtractor
from retrainer.io.host import usable_cpus


def create_engine(extractor: FeatureExtractor, precision: str = FLOAT32,
                  devices: tuple[str, ...] = ()) -> Engine:
    """The engine running `extractor` at `precision` on `devices`.

    Args:
        extractor: any FeatureExtractor.
        precision: one of PRECISIONS, or "auto" (`default_precision` for this extractor; float32
            on a machine with a GPU or on chosen devices, which int8 cannot use).
        devices: `parse_devices` names to split batches over; () = auto: every local GPU when
            there are 2 or more, else TensorFlow's default device.

    Raises:
        UsageError: unknown precision or device, int8 on named devices, bfloat16 on a CPU
            TensorFlow does not run it on, or a precision this extractor cannot be run at
            (exit 2).
    """
    if precision == INT8 and devices:
        raise UsageError("--extractor_precision int8 runs on the CPU (LiteRT) and cannot use "
                         "--extraction_devices; use --extraction_devices auto, or "
                         "--extractor_precision float32 or bfloat16 on those devices.")
    if precision != INT8:
        devices = resolve_devices(devices)
        if precision == AUTO:  # int8 runs on the CPU: a GPU runs TensorFlow's float32 faster
            precision = (FLOAT32 if devices or has_gpu()
                         else default_precision(extractor.spec.name in INT8_MEASURED))
    if precision == FLOAT32:
        return Float32Engine(extractor, devices)
    if precision == BFLOAT16:
        return BFloat16Engine(extractor, devices)
    if precision == INT8:
        return Int8Engine(extractor, threads=usable_cpus())
    raise UsageError(f"--extractor_precision must be one of {[AUTO, *PRECISIONS]}. "
                     f"Received: {precision!r}.")


def as_engine(extractor_or_engine: Union[FeatureExtractor, Engine]) -> Engine:
    """An engine as is; an extractor wrapped in the float32 engine."""
    if isinstance(extractor_or_engine, Engine):
        return extractor_or_engine
    return create_engine(extractor_or_engine, FLOAT32)

