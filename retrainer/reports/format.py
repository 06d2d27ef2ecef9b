"""Number formatting shared by the summary, the HTML report and the audit (pure Python, light)."""

from __future__ import annotations

from typing import Optional


def percent(value: Optional[float]) -> str:
    """A share as "93.1%", "n/a" when unmeasured."""
    return "n/a" if value is None else f"{value * 100:.1f}%"
