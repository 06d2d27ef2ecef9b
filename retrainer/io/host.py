"""What the host gives this process: its CPUs and the user's cache folder.

Kept apart from the stages so that the decoders (`retrainer.data`), the engines and `label-image`
size their thread pools alike, and every cache (vectors, converted engines, downloaded modules)
lives under one folder.
"""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    """`${XDG_CACHE_HOME:-~/.cache}/retrainer` (read on each call: tests redirect it)."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache_home) / "retrainer"


def usable_cpus() -> int:
    """How many CPUs this process may run on: one decode or interpreter thread each."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
