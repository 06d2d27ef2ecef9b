"""Which precisions this CPU runs fast, read from the kernel's CPU flags (no TensorFlow import).

- bfloat16 needs native bfloat16 arithmetic (x86 AVX512-BF16 or AMX-BF16, Arm BF16): elsewhere
  oneDNN emulates it or skips the rewrite, slower than float32.
- int8 runs on XNNPACK's integer kernels: fast with x86 AVX2 (VNNI makes it faster) and on every
  64-bit Arm; on older x86 it falls behind TensorFlow's float32.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

from retrainer.engines.base import BFLOAT16, FLOAT32, INT8, PRECISIONS

_CPUINFO = Path("/proc/cpuinfo")
_ARM = ("aarch64", "arm64")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The first CPU's feature flags (x86 "flags", Arm "Features"); empty where unreadable."""
    try:
        text = _CPUINFO.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def fast_precisions(flags: frozenset[str] | None = None, machine: str | None = None) -> tuple[str, ...]:
    """The precisions this CPU runs natively fast, float32 always included, fastest first.

    Args:
        flags: CPU flags (default: this machine's); machine: e.g. "x86_64" (default: this one's).
    """
    flags = cpu_flags() if flags is None else flags
    machine = (platform.machine() if machine is None else machine).lower()
    found = []
    if machine in _ARM or "avx2" in flags:
        found.append(INT8)
    if {"avx512_bf16", "amx_bf16", "bf16"} & flags:
        found.append(BFLOAT16)
    return (*found, FLOAT32)


def runs_bfloat16(flags: frozenset[str] | None = None, machine: str | None = None) -> bool:
    """Whether TensorFlow applies its oneDNN bfloat16 rewrite on this CPU at all.

    On x86 it needs AVX-512 (oneDNN emulates bfloat16 on AVX512F; natively fast only with
    AVX512-BF16 or AMX): without it TensorFlow skips the rewrite silently and the vectors are
    float32's (seen on an AVX2-only AMD EPYC). Arm builds decide inside TensorFlow.
    """
    flags = cpu_flags() if flags is None else flags
    machine = (platform.machine() if machine is None else machine).lower()
    return machine in _ARM or "avx512f" in flags


def cpu_precisions() -> tuple[str, ...]:
    """The precisions an engine can run at on this machine's CPU (bfloat16 only where TensorFlow
    applies its rewrite, `runs_bfloat16`)."""
    return tuple(precision for precision in PRECISIONS
                 if precision != BFLOAT16 or runs_bfloat16())


def default_precision(measured: bool) -> str:
    """What `--extractor_precision auto` means for one extractor.

    int8 for extractors whose int8 accuracy was measured (the built-in EfficientNet-Lite models:
    their exported graph matched float32's test accuracy at ~3x the speed, README Performance) on a
    CPU that runs int8 fast; float32 for every other extractor or CPU.

    Args:
        measured: whether the extractor is one whose int8 accuracy was measured.
    """
    return INT8 if measured and INT8 in fast_precisions() else FLOAT32
