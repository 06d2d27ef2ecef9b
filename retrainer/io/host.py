"""What the host gives this process: its CPUs.

Kept apart from the stages so that the decoders (`retrainer.data`), the engines and `label-image`
size their thread pools alike.
"""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """How many CPUs this process may run on: one decode or interpreter thread each."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
