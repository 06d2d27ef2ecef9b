"""Import TensorFlow on a background thread, only when the run needs it: `import tensorflow` alone
takes seconds, and the pipeline has work that does not need it (discovery, hashing) to do
meanwhile, while a rerun whose every result is cached needs none at all.

While the import runs, file descriptor 2 is captured (TensorFlow's C++ start-up notices go
straight to it, past Python's logging); when it is joined, every captured line that C++ logging
did not write is passed on, so the pipeline's own warnings are delayed, not lost.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading
from types import ModuleType
from typing import Callable, Iterator, Optional

from retrainer.io.host import filtered_stderr, is_native_log_line
from retrainer.pipeline.timer import StageTimer


def start_devices(module: ModuleType) -> None:
    """Start TensorFlow's devices, if `module`'s import loaded it (they print notices too, e.g.
    when no GPU driver answers): done on the importing thread, while notices are hidden."""
    tensorflow = sys.modules.get("tensorflow")
    if tensorflow is not None and hasattr(tensorflow, "config"):
        tensorflow.config.list_physical_devices()


class TensorFlowLoad:
    """TensorFlow, imported when the run first says it needs it: `start()` begins the import on
    a daemon thread (the run goes on meanwhile), `ready(timer)` waits for it (timed as "import")
    and starts it first if needed. A run that never calls either never imports TensorFlow."""

    def __init__(self, timer: StageTimer, quiet: bool = True) -> None:
        """`quiet`: hide TensorFlow's C++ start-up notices until the import is joined."""
        self._timer = timer
        self.quiet = quiet
        self._loading: Optional[BackgroundImport] = None

    @property
    def started(self) -> bool:
        return self._loading is not None

    def start(self) -> None:
        """Begin the import in the background (once)."""
        if self._loading is None:
            self._loading = BackgroundImport("tensorflow", self.quiet, then=start_devices)

    def ready(self) -> None:
        """Return once TensorFlow is imported (its import's errors are raised here)."""
        self.start()
        assert self._loading is not None
        with self._timer("import"):
            self._loading.module()

    def close(self) -> None:
        """Stop hiding notices (a run that fails before joining the import)."""
        if self._loading is not None:
            self._loading.close()


class BackgroundImport:
    """`importlib.import_module(name)` on a daemon thread; `module()` waits for it."""

    def __init__(self, name: str, quiet: bool = True,
                 then: Optional[Callable[[ModuleType], object]] = None) -> None:
        """Start importing `name`, then calling `then(module)` on the same thread (e.g. to start
        TensorFlow's devices, which print notices too); `quiet`: hide C++ start-up notices (see
        the module docstring) until `module()` is called."""
        self.name = name
        self._then = then
        self._module: Optional[ModuleType] = sys.modules.get(name)
        self._error: Optional[BaseException] = None
        self._stderr: Optional[contextlib.ExitStack] = None
        self._thread: Optional[threading.Thread] = None
        if self._module is not None and then is None:
            return
        if quiet:
            self._stderr = contextlib.ExitStack()
            self._stderr.enter_context(_native_notices_hidden())
        self._thread = threading.Thread(target=self._load, name=f"import {name}", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        try:
            module = self._module or importlib.import_module(self.name)
            if self._then is not None:
                self._then(module)
            self._module = module
        except BaseException as error:  # re-raised in the caller's thread by module()
            self._error = error

    def module(self) -> ModuleType:
        """The imported module, once its import has finished.

        Raises:
            Whatever the import raised.
        """
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.close(self._error)
        if self._error is not None:
            raise self._error
        assert self._module is not None
        return self._module

    def close(self, error: Optional[BaseException] = None) -> None:
        """Stop capturing stderr (an import still running then shows its notices); with the
        import's `error`, every captured line is passed on (the notices may explain it)."""
        if self._stderr is not None:
            stack, self._stderr = self._stderr, None
            if error is None:
                stack.close()
            else:
                stack.__exit__(type(error), error, error.__traceback__)


@contextlib.contextmanager
def _native_notices_hidden() -> Iterator[None]:
    with filtered_stderr(lambda line: not is_native_log_line(line), keep_all_on_error=True):
        yield
