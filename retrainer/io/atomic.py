"""Atomic writes: readers (and a rerun after a kill) see the old file or the new one, never half.

Everything is first written next to its destination (same folder, so same file system) under a
hidden temporary name, then renamed over it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from retrainer.io.storage import (
    AnyPath,
    is_url,
    remove_stale_remote_temporaries,
    replace_remote_directory,
    write_remote_bytes,
)

T = TypeVar("T")
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


def write_bytes_atomically(path: os.PathLike[str] | str, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same folder and `os.replace`.

    The file gets 0o666 less the umask, like any new file (not mkstemp's owner-only 0o600), so
    exports and a shared cache stay readable by other users (tensorflow/hub#302). A URL goes
    through `retrainer.io.storage` (temp object, then rename: a copy on object stores).
    """
    if is_url(path):
        write_remote_bytes(path, data)
        return
    path = Path(path)
    temp_name = _written_temporary(path, data)
    try:
        os.replace(temp_name, path)
    except BaseException:  # e.g. Ctrl-C, which may also land just after the rename
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise


def write_linked_atomically(paths: Sequence[Path], data: bytes) -> int:
    """Publish one file's `data` under each of `paths` (local, one file system): hard links.

    A file system creates a link far faster than a file (25 us against 0.8 ms per file measured on
    ext4, docs/performance.md), so entries written together share one file. It is written whole
    under a temporary name beside `paths[0]`, then linked under each name in turn (replacing what
    is there, atomically), then the temporary name goes: every name always holds the whole file.

    Returns:
        How many of `paths` were linked, in order: fewer than all where the file system has no
        hard links (then the caller writes the rest another way).
    """
    temp_name = making_folder(paths[0], lambda: _written_temporary(paths[0], data))
    try:
        for count, path in enumerate(paths):
            try:
                _link_over(temp_name, path)
            except OSError as error:
                if error.errno in _NO_HARD_LINKS:
                    return count
                raise
        return len(paths)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)


# What os.link raises where the file system cannot link (FAT, some network shares, link limits).
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK,
                            errno.EXDEV, errno.ENOSYS})


def _link_over(source: str, path: Path) -> None:
    """Hard-link `source` as `path`, replacing an existing `path` atomically."""
    try:
        making_folder(path, lambda: os.link(source, path))
    except FileExistsError:  # e.g. an entry recomputed after damage
        if os.path.samefile(source, path):  # a name given twice (byte copies in one batch):
            return  # renaming a link over its twin would do nothing and leave the spare behind
        spare = _sibling_name(path, ".tmp")
        os.link(source, spare)
        try:
            os.replace(spare, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spare)
            raise


def making_folder(path: AnyPath, operation: Callable[[], T]) -> T:
    """`operation()`, run again after making `path`'s folder if that was missing."""
    try:
        return operation()
    except FileNotFoundError:  # the first entry of its folder
        path.parent.mkdir(parents=True, exist_ok=True)
        return operation()


def _written_temporary(path: Path, data: bytes) -> str:
    """`data` written whole under a new hidden name beside `path`.

    The file gets 0o666 less the umask, like any new file (not mkstemp's owner-only 0o600). An
    error names `path`, and leaves no temporary behind.
    """
    temp_name = _sibling_name(path, ".tmp")
    try:
        handle = os.open(temp_name, _NEW_FILE, 0o666)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        if isinstance(error, OSError) and error.filename in (None, temp_name):  # say where
            raise OSError(error.errno, error.strerror, os.fspath(path)) from error
        raise
    return temp_name


def write_text_atomically(path: os.PathLike[str] | str, text: str) -> None:
    """UTF-8 text version of `write_bytes_atomically`."""
    write_bytes_atomically(path, text.encode("utf-8"))


def replace_directory(path: os.PathLike[str] | str, fill: Callable[[Path], None]) -> None:
    """Build a directory with `fill(staging_dir)` next to `path`, then swap it into place.

    An existing `path` is moved aside first and deleted after the swap; there is a moment with
    no `path`, but never one with a half-written directory under that name. A URL is built
    locally and uploaded, not atomically (`retrainer.io.storage.replace_remote_directory`).
    """
    if is_url(path):
        replace_remote_directory(path, fill)
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
        return list(remove_stale_remote_temporaries(path))
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?:[0-9a-f]{{16}}\.tmp|\w+\.old)$")
    removed: list[AnyPath] = []
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
