"""What the host gives this process: its CPUs, the user's cache folder, its stderr.

Kept apart from the stages so that the decoders (`retrainer.data`), the engines and `label-image`
size their thread pools alike, every cache (vectors, converted engines, downloaded modules) lives
under one folder, and C++ libraries' start-up chatter is silenced one way.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator


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


@contextlib.contextmanager
def filtered_stderr(keep: Callable[[str], bool], keep_all_on_error: bool = False
                    ) -> Iterator[None]:
    """Run the block with file descriptor 2 captured, then pass on the lines `keep` accepts.

    C++ libraries (TensorFlow, LiteRT) write notices straight to fd 2, past Python's logging. With
    `keep_all_on_error`, a block that raises has everything it printed passed on (the notices may
    explain the failure).
    """
    sys.stderr.flush()
    saved = os.dup(2)
    failed = False
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = keep_all_on_error
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if failed or keep(line)))
