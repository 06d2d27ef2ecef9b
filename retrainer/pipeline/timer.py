"""Wall time per pipeline stage: the `seconds` of the result document."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator


class StageTimer:
    """Times `with timer("stage"):` blocks; `seconds()` adds the run's "total"."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self._seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str, active: bool = True) -> Iterator[None]:
        """Time the block as `stage`; an inactive stage (a mode not asked for) is not listed."""
        started = time.perf_counter()
        try:
            yield
        finally:
            if active:
                self._seconds[stage] = time.perf_counter() - started

    def seconds(self) -> dict[str, float]:
        return {**self._seconds, "total": time.perf_counter() - self.started}
