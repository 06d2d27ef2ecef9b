"""What the host gives this process: its CPUs, the user's cache folder, its stderr, its clock
and memory, and which retrainer code runs (`code_digest`).

Kept apart from the stages so that the decoders (`retrainer.data`), the engines and `label-image`
size their thread pools alike, every cache (vectors, converted engines, downloaded modules) lives
under one folder, C++ libraries' start-up chatter is silenced one way, and a run's time and
memory are measured from the process's own start (`process_age`, `peak_memory_bytes`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import importlib.metadata
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

log = logging.getLogger(__name__)

# Lines TensorFlow's and absl's C++ code write straight to fd 2 while TensorFlow loads:
# "I0000 00:00:1796333663.250190   31338 port.cc:153] oneDNN ..." and absl's preamble.
_NATIVE_LOG_PREFIXES = ("WARNING: All log messages before absl::InitializeLog()",
                        "To enable the following instructions:")  # cpu_feature_guard's 2nd line


@functools.cache
def code_digest() -> str:
    """SHA-256 of retrainer's own source files (a few ms, once): results cached by content
    (the frozen graph's record, the report's pictures) include it, so changed code makes them
    anew."""
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for source in sorted(package.rglob("*.py")):
        digest.update(source.relative_to(package).as_posix().encode() + b"\0")
        digest.update(source.read_bytes())
    return digest.hexdigest()


@functools.cache
def tensorflow_version() -> str:
    """The installed TensorFlow's version, read from its package metadata: results cached by
    content can be looked up without importing TensorFlow (seconds)."""
    for distribution in ("tensorflow", "tensorflow-cpu", "tensorflow-intel", "tf-nightly"):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def user_cache_dir() -> Path:
    """`${XDG_CACHE_HOME:-~/.cache}/retrainer` (read on each call: tests redirect it)."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache_home) / "retrainer"


def warn_not_kept(root: os.PathLike[str] | str, path: os.PathLike[str] | str, error: OSError
                  ) -> None:
    """A file of the cache folder `root` (the user's cache, or --bottleneck_dir) could not be
    written: one warning per process and cache, saying what to do; each file at debug level."""
    log.debug("Could not keep %s for the next run: %s", path, error)
    user = user_cache_dir()
    in_user_cache = Path(root).is_relative_to(user)
    _warn_once(os.fspath(user if in_user_cache else root), error.strerror or str(error),
               "set XDG_CACHE_HOME to a writable folder" if in_user_cache
               else "pass --bottleneck_dir a writable folder")


@functools.cache
def _warn_once(folder: str, reason: str, fix: str) -> None:
    log.warning("Cannot write retrainer's cache %s (%s): what it keeps for the next run is made "
                "again on every run; %s.", folder, reason, fix)


def quiet_matplotlib_folders() -> None:
    """When the user's cache folder (XDG_CACHE_HOME) cannot be written, hide matplotlib's notices
    that it works in a temporary folder instead (its own fallback, unchanged): retrainer's
    warning (`warn_not_kept`) already names the folder and the fix."""
    if not _could_write(user_cache_dir().parent / "matplotlib"):
        for logger in ("matplotlib", "matplotlib.font_manager"):
            logging.getLogger(logger).addFilter(_not_a_folder_notice)


# What matplotlib logs on every import when its cache folder is unusable (then a temporary one)
_MATPLOTLIB_FOLDER_NOTICES = ("mkdir -p failed for path", "Matplotlib created a temporary",
                              "Matplotlib is building the font cache")


def _not_a_folder_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_MATPLOTLIB_FOLDER_NOTICES)


def _could_write(folder: Path) -> bool:
    """Whether `folder` is, or could be made, a writable folder (its nearest existing ancestor is
    a writable folder); nothing is created."""
    while not os.path.lexists(folder):
        if folder.parent == folder:
            return False
        folder = folder.parent
    return os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)


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


def is_native_log_line(line: str) -> bool:
    """True for a line that C++ logging (absl, TensorFlow, LiteRT) wrote, not Python."""
    head = line[:6]
    return (line.startswith(_NATIVE_LOG_PREFIXES)
            or (len(head) == 6 and head[0] in "IWEF" and head[1:5].isdigit() and head[5] == " "))


def process_age() -> Optional[float]:
    """Seconds since this process was created (fork/exec), from the kernel; None where the
    kernel does not say (not Linux). Resolution: one clock tick (10 ms)."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
        started_ticks = int(fields[19])  # field 22, starttime: clock ticks since boot
        ticks = os.sysconf("SC_CLK_TCK")
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started_ticks / ticks)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def reset_peak_memory() -> bool:
    """Start a new peak of resident memory (Linux: clear_refs 5); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def peak_memory_bytes() -> int:
    """The peak resident memory since the last `reset_peak_memory` (else since start), bytes."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS: bytes; Linux: KiB


def release_free_memory() -> None:
    """Give the C allocator's free pages back to the system (glibc's `malloc_trim`; a no-op
    elsewhere). Each worker thread allocates from an arena of its own, whose free pages no other
    thread reuses: after a stage whose threads freed hundreds of MB (reading a million files,
    the audit's label model), they would stay resident through the stages after it."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Optional[Callable[[int], Any]]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim  # the process's own C library
    except (OSError, AttributeError):  # musl has none
        return None
