"""Resource limits: how much memory a model may declare before it is refused unloaded.

A model can ask for far more memory than its file holds: a `Const` whose one stored value is
broadcast to a declared shape of billions of elements, a `Fill` or `BroadcastTo` to a huge constant
shape, a variable or TFLite tensor declared that large. The checker adds up what the model declares
and compares it with two limits, read from the environment so that every entry point (the CLIs,
the Python API, Beam workers) honours the same values.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Mapping, Optional

from retrainer.errors import UsageError

TENSOR_LIMIT_VARIABLE = "RETRAINER_MAX_TENSOR_BYTES"
TOTAL_LIMIT_VARIABLE = "RETRAINER_MAX_MODEL_BYTES"
# Far above any real image classifier: the biggest float32 `keras:` backbone (ConvNeXtXLarge) has
# 1.4 GB of weights, its biggest single tensor 67 MB.
DEFAULT_MAX_TENSOR_BYTES = 1 << 30
DEFAULT_MAX_MODEL_BYTES = 4 << 30

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class ResourceLimits:
    """Most bytes one tensor, and all constants and variables together, may declare.

    Attributes:
        max_tensor_bytes: any one constant, variable, or tensor of a shape fixed in the model.
        max_model_bytes: the sum of every constant and variable.
    """

    max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES

    @classmethod
    def from_environment(cls, environ: Optional[Mapping[str, str]] = None) -> "ResourceLimits":
        """The limits set in RETRAINER_MAX_TENSOR_BYTES / RETRAINER_MAX_MODEL_BYTES, else defaults.

        Values are byte counts with an optional K, M, G or T suffix (powers of 1024): "8G".

        Raises:
            UsageError: a value that is not such a size.
        """
        environ = os.environ if environ is None else environ
        return cls(
            max_tensor_bytes=_size_from(environ, TENSOR_LIMIT_VARIABLE, DEFAULT_MAX_TENSOR_BYTES),
            max_model_bytes=_size_from(environ, TOTAL_LIMIT_VARIABLE, DEFAULT_MAX_MODEL_BYTES),
        )


def parse_size(text: str) -> int:
    """"8G" -> 8589934592. Raises ValueError for anything else."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(text)
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def format_size(count: float) -> str:
    """Bytes for people: 3.7 GiB, 512 MiB, 12 KiB, 100 B."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{int(count)} B"


def element_count(dims: list[int]) -> Optional[int]:
    """Elements of a shape; None when a dimension is unknown (negative)."""
    if any(dim < 0 for dim in dims):
        return None
    return math.prod(dims)


def _size_from(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = parse_size(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"{name} must be a size in bytes such as 2G or 512M. Received: {text!r}")
    return value


class Budget:
    """Adds up what a model declares; `over()` says which limit the latest tensor broke, if any."""

    def __init__(self, limits: ResourceLimits) -> None:
        self.limits = limits
        self.total = 0

    def tensor(self, nbytes: int, stored: bool) -> Optional[str]:
        """Account one tensor of `nbytes`; `stored` = a constant or variable (counts to the total).

        Returns:
            None when within the limits, else the broken limit, worded for the error message.
        """
        if nbytes > self.limits.max_tensor_bytes:
            return (f"over the {format_size(self.limits.max_tensor_bytes)} limit for one tensor "
                    f"(raise it with {TENSOR_LIMIT_VARIABLE}=<bytes>, e.g. 8G)")
        if stored:
            self.total += nbytes
            if self.total > self.limits.max_model_bytes:
                return (f"which brings the model's constants and variables to "
                        f"{format_size(self.total)}, over the "
                        f"{format_size(self.limits.max_model_bytes)} limit (raise it with "
                        f"{TOTAL_LIMIT_VARIABLE}=<bytes>, e.g. 16G)")
        return None
