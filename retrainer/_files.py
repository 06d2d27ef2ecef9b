"""Atomic writes: readers (and a rerun after a kill) see the old file or the new one, never half.

Everything is first written next to its destination (same folder, so same file system) under a
hidden temporary name, then renamed over it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from retrainer.storage import (
    AnyPath,
    as_path,
    is_url,
    remove_stale_remote_temporaries,
    replace_remote_directory,
    write_remote_bytes,
)

_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


def write_bytes_atomically(path: os.PathLike[str] | str, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same folder and `os.replace`.

    The file gets 0o666 less the umask, like any new file (not mkstemp's owner-only 0o600), so
    exports and a shared cache stay readable by other users (tensorflow/hub#302). A URL goes
    through `retrainer.storage` (temp object, then rename: a copy on object stores).
    """
    if is_url(path):
        write_remote_bytes(path, data)
        return
    path = Path(path)
    temp_name = _sibling_name(path, ".tmp")
    handle = os.open(temp_name, _NEW_FILE, 0o666)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temp_name, path)
    except BaseException as error:  # e.g. Ctrl-C, which may also land just after the rename
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        if isinstance(error, OSError) and error.filename is None:  # e.g. disk full: say where
            raise OSError(error.errno, error.strerror, os.fspath(path)) from error
        raise


def write_text_atomically(path: os.PathLike[str] | str, text: str) -> None:
    """UTF-8 text version of `write_bytes_atomically`."""
    write_bytes_atomically(path, text.encode("utf-8"))


def replace_directory(path: os.PathLike[str] | str, fill: Callable[[Path], None]) -> None:
    """Build a directory with `fill(staging_dir)` next to `path`, then swap it into place.

    An existing `path` is moved aside first and deleted after the swap; there is a moment with
    no `path`, but never one with a half-written directory under that name. A URL is built
    locally and uploaded, not atomically (`retrainer.storage.replace_remote_directory`).
    """
    if is_url(path):
        replace_remote_directory(as_path(path), fill)
        return
    path = Path(path)
    staging = Path(_sibling_name(path, ".tmp"))
    staging.mkdir(0o777)  # less the umask, unlike mkdtemp's owner-only 0o700
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


# A concurrent writer's temporary is seconds old; one this old was left by a killed process.
STALE_AFTER_SECONDS = 3600.0


def remove_stale_temporaries(path: os.PathLike[str] | str) -> list[AnyPath]:
    """Delete what a killed writer of `path` left beside it (`.NAME.<hex>.tmp`, `.NAME.*.old`).

    Only entries older than STALE_AFTER_SECONDS go, so a run writing the same path right now keeps
    its temporary. Returns the paths removed. On a URL: the remote temporaries of `path`, after
    3 days (`remove_stale_remote_temporaries`, one listing of its folder).
    """
    if is_url(path):
        return remove_stale_remote_temporaries(path)
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?:[0-9a-f]{{16}}\.tmp|\w+\.old)$")
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(path.parent):
            if not pattern.match(entry.name):
                continue
            if time.time() - entry.stat(follow_symlinks=False).st_mtime < STALE_AFTER_SECONDS:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def _sibling_name(path: Path, suffix: str) -> str:
    """A new hidden name beside `path` (same folder, so `os.replace` onto `path` is atomic)."""
    return os.path.join(path.parent, f".{path.name}.{secrets.token_hex(8)}{suffix}")
