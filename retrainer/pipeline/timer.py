"""Wall time and peak memory of every part of a run: the result document's `seconds` and
`peak_memory_gib`.

Every moment of the run belongs to exactly one part: the innermost `with timer("part"):` block
running, else "other" (the moments between parts), so the parts add up to "total". The CLI starts
its timer with the process's age (`io.host.process_age`: "start-up" is the interpreter and the
CLI's imports) and ends it just before the process exits, so "total" is the process's wall time;
a timer made by a Python caller starts at that moment.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator, Optional

from retrainer.io.host import peak_memory_bytes, process_age, reset_peak_memory

OTHER = "other"
STARTUP = "start-up"


class StageTimer:
    """Times `with timer("stage"):` blocks; see the module docstring."""

    def __init__(self, since_process_start: bool = False) -> None:
        """`since_process_start`: count the time before this call as "start-up" (the CLI)."""
        now = time.perf_counter()
        age = process_age() if since_process_start else None
        self.started = now - (age or 0.0)
        self._seconds: dict[str, float] = {STARTUP: age} if age is not None else {}
        self._peaks: dict[str, int] = {}
        self._active: list[str] = []
        self._last = now
        if age is not None:
            self._peaks[STARTUP] = peak_memory_bytes()
            reset_peak_memory()

    @contextlib.contextmanager
    def __call__(self, stage: str, active: bool = True) -> Iterator[None]:
        """Time the block as `stage`; an inactive stage (a mode not asked for) is not listed:
        its moments count as the enclosing part's."""
        if not active:
            yield
            return
        self._credit()
        self._active.append(stage)
        self._seconds.setdefault(stage, 0.0)
        try:
            yield
        finally:
            self._credit()
            self._active.pop()

    def _credit(self) -> None:
        """Give the time and the memory peak since the last boundary to the running part."""
        now = time.perf_counter()
        part = self._active[-1] if self._active else OTHER
        self._seconds[part] = self._seconds.get(part, 0.0) + now - self._last
        self._last = now
        peak = peak_memory_bytes()
        for stage in {*self._active, part}:
            self._peaks[stage] = max(self._peaks.get(stage, 0), peak)
        reset_peak_memory()

    def seconds(self) -> dict[str, float]:
        """{part: seconds} in the order the parts began, "other", then "total" (their sum)."""
        self._credit()
        parts = {stage: seconds for stage, seconds in self._seconds.items() if stage != OTHER}
        parts[OTHER] = self._seconds.get(OTHER, 0.0)
        return {**parts, "total": self._last - self.started}

    def peak_memory_gib(self) -> dict[str, float]:
        """{part: its peak resident memory, GiB}, and "total": the run's peak."""
        self._credit()
        peaks = {stage: peak / 2**30 for stage, peak in self._peaks.items()}
        return {**peaks, "total": max(peaks.values(), default=0.0)}

    def peak_stage(self) -> Optional[str]:
        """The part during which memory peaked."""
        peaks = self.peak_memory_gib()
        peaks.pop("total")
        return max(peaks, key=peaks.__getitem__) if peaks else None
