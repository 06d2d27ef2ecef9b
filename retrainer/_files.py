"""Atomic writes: readers (and a rerun after a kill) see the old file or the new one, never half.

Everything is first written next to its destination (same folder, so same file system) under a
hidden temporary name, then renamed over it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def write_bytes_atomically(path: os.PathLike[str] | str, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same folder and `os.replace`."""
    path = Path(path)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temp_name, path)
    except BaseException:
        os.unlink(temp_name)
        raise


def write_text_atomically(path: os.PathLike[str] | str, text: str) -> None:
    """UTF-8 text version of `write_bytes_atomically`."""
    write_bytes_atomically(path, text.encode("utf-8"))


def replace_directory(path: os.PathLike[str] | str, fill: Callable[[Path], None]) -> None:
    """Build a directory with `fill(staging_dir)` next to `path`, then swap it into place.

    An existing `path` is moved aside first and deleted after the swap; there is a moment with
    no `path`, but never one with a half-written directory under that name.
    """
    path = Path(path)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        fill(staging)
        if path.exists():
            retired = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, retired / path.name)
            os.replace(staging, path)
            shutil.rmtree(retired)
        else:
            os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
