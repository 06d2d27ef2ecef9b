"""Thin click front-ends. Shared here: turning library errors into one line and an exit code.

Only this package imports click. TensorFlow is imported inside the commands, so `--help` is instant.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import functools
import logging
import os
import signal
import sys
from typing import Any, Callable, NoReturn, TypeVar

import click

from retrainer import __version__
from retrainer.errors import EXIT_INTERRUPTED, EXIT_USAGE, RetrainerError
from retrainer.io.host import filtered_stderr, quiet_matplotlib_folders
from retrainer.io.storage import as_path, is_url

F = TypeVar("F", bound=Callable[..., Any])
# The machine, not the code, refused a write (disk full, quota, read-only, file size limit, another
# user's files): a one-line error with exit code 2, not a traceback.
_UNWRITABLE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES,
                                errno.EPERM})


VERBOSITIES = ("DEBUG", "INFO", "WARN", "ERROR", "FATAL")  # --logging_verbosity, as retrain.py's


def option(name: str, *aliases: str, **kwargs: Any) -> Callable[[F], F]:
    """A click option under retrain.py's / label_image.py's underscore name and its dash spelling
    (--image_dir and --image-dir), passed to the command as `name`; `aliases` are other names
    for the same setting (e.g. make_image_classifier's), underscore spelling only."""
    spellings = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    return click.option(*spellings, *(f"--{alias}" for alias in aliases), name, **kwargs)


def version_option(program: str) -> Callable[[F], F]:
    """--version: print "<program>, version X.Y.Z" and exit 0."""
    return click.version_option(__version__, "--version", prog_name=program,
                                message="%(prog)s, version %(version)s")


class PathOrUrl(click.ParamType):  # type: ignore[type-arg]
    """A local path (`pathlib.Path`) or a URL such as gs://bucket/x (`retrainer.io.storage`), unmangled
    (`click.Path(path_type=Path)` would turn gs://b into gs:/b)."""

    name = "path"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        return as_path(value) if value != "" else value  # '' stays '' (e.g. "no metrics file")


def hide_native_info_logs() -> None:
    """TensorFlow's C++ INFO and WARNING lines off (TF_CPP_MIN_LOG_LEVEL=2, unless set): set
    before TensorFlow loads, which reads it once."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def quiet_tensorflow(verbose: bool = False) -> None:
    """Import TensorFlow and set up its devices without its C++ start-up chatter on stderr.

    TensorFlow 2.x writes oneDNN/CUDA notices straight to file descriptor 2 before its logging is
    configured, so TF_CPP_MIN_LOG_LEVEL alone does not hide them. Unless `verbose`, the import runs
    with fd 2 redirected to a temporary file, which is replayed if the import fails.
    """
    hide_native_info_logs()
    if verbose or "tensorflow" in sys.modules:
        return
    with filtered_stderr(lambda line: False, keep_all_on_error=True):
        import tensorflow as tf  # here, not at the top: --help must not load it

        tf.config.list_physical_devices()


def exit_at_once(command: click.Command, **context: Any) -> None:
    """Run a click command as a console script, then end the process without Python's teardown.

    With TensorFlow loaded, the interpreter's own shutdown (module teardown, thread pools,
    freeing every object) takes about half a second and does nothing a finished command needs:
    its files are written and closed, its threads joined. So once the command has returned (or
    exited with a code), the `atexit` clean-ups run (TensorFlow's autograph removes the modules it
    wrote to the temporary folder there: about 15 files a run would be left behind; the clean-ups
    take under a millisecond), stdout and stderr are flushed and the process ends with that code. A
    command that raises anything else (a bug) ends the usual way, with its traceback.
    `context`: click context settings, e.g. `obj`.
    """
    try:
        command.main(standalone_mode=True, **context)
        code: Any = 0
    except SystemExit as done:
        code = done.code
    if code is not None and not isinstance(code, int):
        sys.stderr.write(f"{code}\n")  # what `sys.exit("message")` prints
        code = 1
    atexit._run_exitfuncs()  # what the interpreter's shutdown would run first; os._exit runs none
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing can reach it
            stream.flush()
    os._exit(code or 0)


def configure_logging(verbosity: str) -> None:
    """Logs go to stderr; results go to stdout."""
    logging.basicConfig(
        level=getattr(logging, verbosity.upper()),
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # TensorFlow's own INFO lines ("Assets written to ...") are not our progress.
    for library in ("tensorflow", "absl"):
        logging.getLogger(library).setLevel(max(logging.getLogger().level, logging.WARNING))
    quiet_matplotlib_folders()  # an unusable cache folder: retrainer's one warning says so


def reports_errors(command: F) -> F:
    """Map `RetrainerError` to 'Error: ...' on stderr plus its exit code; Ctrl-C/SIGTERM to 130."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous_sigterm = _sigterm_as_interrupt()
        try:
            return command(*args, **kwargs)
        except RetrainerError as error:
            _error_line(str(error))
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            _interrupted()
        except OSError as error:
            if _raised_while_interrupted(error):
                _interrupted()
            if is_url(error.filename):  # a remote store refused or failed (retrainer.io.storage)
                _error_line(f"{error.strerror}: {error.filename}. Check the path and its access "
                            "rights, then rerun: work done so far is kept.")
                sys.exit(EXIT_USAGE)
            if error.errno not in _UNWRITABLE_ERRNOS:
                raise
            where = f": {error.filename}" if error.filename else ""
            _error_line(f"{error.strerror}{where}. Free some space or fix the permissions (or "
                        "pass another path), then rerun: work done so far is kept.")
            sys.exit(EXIT_USAGE)
        except Exception as error:
            if not _raised_while_interrupted(error):
                raise
            _interrupted()
        finally:
            if previous_sigterm is not None:
                signal.signal(signal.SIGTERM, previous_sigterm)

    return wrapper  # type: ignore[return-value]


def _interrupted() -> NoReturn:
    click.echo("Interrupted; work done so far is kept (rerun to resume).", err=True)
    sys.exit(EXIT_INTERRUPTED)


def _raised_while_interrupted(error: BaseException) -> bool:
    """Whether `error` came from clean-up that Ctrl-C started: TensorFlow's tracing context
    (tf_stack) asserts "Concurrent access?" when the interrupt lands between its enter and exit."""
    context = error.__context__
    while context is not None:
        if isinstance(context, KeyboardInterrupt):
            return True
        context = context.__context__
    return False


# Control characters and line separators a file or folder name may hold (C0, DEL, C1, U+2028,
# U+2029), escaped so an error stays one line for `tail -n 1` and `str.splitlines` alike and
# cannot drive the terminal.
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(32), *range(127, 160))
            if code != ord("\t")}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def _error_line(message: str) -> None:
    """'Error: message' on stderr, on one line whatever names the message quotes."""
    click.echo(f"Error: {message.translate(_ESCAPES)}", err=True)


def _sigterm_as_interrupt() -> Any:
    """Make SIGTERM (CI cancel, `timeout`) stop like Ctrl-C; returns the previous handler."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: signals are not ours to handle
        return None
