"""The report's pictures drawn in a helper process that imports matplotlib while the run leaves a
core idle.

matplotlib's import (~0.35 CPU s, pure Python) and its drawing (~0.25 s for the confusion matrix
and the training curves) hold the GIL: on a thread beside the exports and the heat maps they
slow both down. A `Painter`, started with the run (`retrainer.pipeline.run`: a command that has
not finished with this cache before, on 2 or more cores), runs `python -m
retrainer.reports.painter`, whose imports run on a thread at the lowest priority (nice 19: only
on a core the run leaves idle; Linux, where a nice value is a thread's); `draw` then hands it
`draw_pictures`' arguments and its main thread, at the run's own priority, draws them. When it
has not finished importing by then (a busy machine), is not there, or dies, the pictures are
drawn on a thread of this process; the PNGs are the same bytes either way. Measured on 1,000
Fashion-MNIST images (cold, int8, 2 cores): the heat maps' stage 0.55-0.65 -> 0.35-0.4 s.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pickle
import select
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, BinaryIO, Callable, Optional

log = logging.getLogger(__name__)

_READY = b"R"  # the helper's imports are done
# imported by name in the helper, whose first thread must stay light: what draws the pictures
# (`writer.draw_pictures`' module) and matplotlib's modules (`plots.load_matplotlib`)
_AHEAD = ("retrainer.reports.writer", "retrainer.reports.plots")


class Painter:
    """The helper process (Linux only; elsewhere `draw` always uses a thread), as a context
    manager: closed however the stages end."""

    def __init__(self, start: bool = True) -> None:
        """`start`: start the process now (False: `draw` uses a thread: e.g. a rerun whose
        pictures are kept)."""
        self._process: Optional[subprocess.Popen[bytes]] = None
        self._ready = False
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="report-pictures")
        if start and sys.platform.startswith("linux") and sys.executable:  # not embedded
            try:
                # Its own session: a Ctrl-C at the terminal interrupts the run, which stops
                # the helper, and not the helper mid-import (a traceback in the run's output).
                # It ends by itself when the run does (its stdin reaches end of file).
                self._process = subprocess.Popen(
                    [sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, start_new_session=True,
                    env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, sys.path))})
            except OSError:  # no interpreter to start: drawn on a thread
                self._process = None

    def __enter__(self) -> Painter:
        return self

    def __exit__(self, kind: Optional[type[BaseException]], error: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        self.close()

    def ready(self, timeout: Optional[float] = 0.0) -> bool:
        """Whether the helper has imported matplotlib, waiting up to `timeout` seconds for it
        (None: until it has or has ended; the run never waits: 0)."""
        process = self._process
        if process is None or process.stdout is None:
            return False
        if not self._ready:
            try:
                if select.select([process.stdout], [], [], timeout)[0]:
                    self._ready = process.stdout.read(1) == _READY
            except (OSError, ValueError):  # it died
                self._ready = False
        return self._ready

    def draw(self, draw_pictures: Callable[..., Any], *args: Any) -> Callable[[], Any]:
        """Start `draw_pictures(*args)` (a module-level function: the helper imports it by
        name): in the helper if it is `ready()`, else on a thread of this process. Once only.

        Returns:
            what waits for its result (draw_pictures' exceptions are raised there; a helper that
            died meanwhile leaves it to this process).
        """
        ready, process, self._process = self.ready(), self._process, None
        if process is not None and ready:
            assert process.stdin is not None
            try:
                pickle.dump((draw_pictures.__module__, draw_pictures.__qualname__, args),
                            process.stdin)
                process.stdin.flush()
            except OSError:  # it died: drawn here
                ready = False
        if process is not None and ready:
            log.debug("Report pictures: drawn by the helper process")
            answer = self._thread.submit(_answer, process)
            return lambda: _result(answer, draw_pictures, args)
        if process is not None:
            log.debug("Report pictures: drawn on a thread (the helper was not ready)")
            process.kill()  # reaped after the drawing: a niced process can take a while to exit
        drawing = self._thread.submit(draw_pictures, *args)
        if process is not None:
            self._thread.submit(_stop, process)
        return drawing.result

    def close(self) -> None:
        """Stop the helper (if unused) and join the thread."""
        if self._process is not None:
            _stop(self._process)
            self._process = None
        self._thread.shutdown(wait=True)


def _answer(process: subprocess.Popen[bytes]) -> tuple[bool, Any]:
    """(failed, the pictures or draw_pictures' exception) from the helper."""
    try:
        assert process.stdout is not None
        answer: tuple[bool, Any] = pickle.load(process.stdout)
        return answer
    finally:
        _stop(process)


def _result(answer: Future[tuple[bool, Any]], draw_pictures: Callable[..., Any],
            args: tuple[Any, ...]) -> Any:
    try:
        failed, value = answer.result()
    except (OSError, EOFError, pickle.UnpicklingError):  # the helper died: drawn here instead
        return draw_pictures(*args)
    if failed:
        raise value
    return value


def _stop(process: subprocess.Popen[bytes]) -> None:
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    process.kill()
    process.wait()


def _import_at_low_priority(answers: BinaryIO) -> None:
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # this thread only (Linux)
    _, plots = map(importlib.import_module, _AHEAD)
    plots.load_matplotlib()
    answers.write(_READY)
    answers.flush()


def _serve() -> None:
    """The helper: import, say so, then draw the one request (see the module docstring)."""
    answers = sys.stdout.buffer
    importing = threading.Thread(target=_import_at_low_priority, args=(answers,), daemon=True)
    importing.start()
    try:
        module, name, args = pickle.load(sys.stdin.buffer)  # sent only once _READY was read
    except EOFError:  # the run ended without pictures, or drew them itself
        return
    importing.join()
    try:
        result: tuple[bool, Any] = (False, getattr(importlib.import_module(module), name)(*args))
    except Exception as error:
        result = (True, error)
    pickle.dump(result, answers)
    answers.flush()


if __name__ == "__main__":
    _serve()
