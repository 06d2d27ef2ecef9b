"""Error hierarchy and the exit codes the command-line tools map it to.

Library code raises these for user mistakes (bad flags, paths, data, models); the CLI catches them
once, prints a one-line message and exits with the error's documented code. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_BUG = 1  # unexpected internal error (Python traceback)
EXIT_USAGE = 2  # bad flag value, missing or unwritable path
EXIT_DATA = 3  # unusable dataset: no classes, clashing labels, no decodable images
EXIT_MODEL = 4  # model or graph unusable: missing weights package, corrupt file, refused by the checks
EXIT_UNREADABLE_IMAGES = 5  # label-image: some inputs could not be classified (the rest were)
EXIT_QUALITY_GATE = 6  # retrain: the model missed --assert_accuracy_at_least (nothing exported)
EXIT_EXPORT_MISMATCH = 7  # retrain: an export lost more accuracy than allowed vs the frozen graph
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM


class RetrainerError(Exception):
    """A user-facing error: the message says what was expected, what was found and what to do."""

    exit_code: int = EXIT_USAGE


class UsageError(RetrainerError):
    """A flag value or path the user gave cannot be used."""

    exit_code = EXIT_USAGE


class DataError(RetrainerError):
    """The image folder cannot produce a classifier (too few classes, no images, ...)."""

    exit_code = EXIT_DATA


class ModelError(RetrainerError):
    """A feature extractor, weights file or exported graph cannot be loaded or used."""

    exit_code = EXIT_MODEL


class UntrustedModelError(ModelError):
    """A model file refused before anything in it ran (`retrainer.security`): an op outside the
    allowlist, a restore from outside its folder, or tensors over the resource limits."""


class UnreadableImagesError(RetrainerError):
    """Some inputs could not be read; the others were processed and reported."""

    exit_code = EXIT_UNREADABLE_IMAGES


class FinishedRunError(RetrainerError):
    """A run that finished and wrote its reports, then failed a check its user asked for.

    `result` is the run's `RetrainResult`, so that the CLI still prints the summary or `--json`
    (CI scripts want the figures most when the check fails).
    """

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class QualityGateError(FinishedRunError):
    """The trained model fell short of a quality gate; previous exports were left untouched."""

    exit_code = EXIT_QUALITY_GATE


class ExportMismatchError(FinishedRunError):
    """An exported artifact (e.g. a quantized .tflite) lost more accuracy than allowed."""

    exit_code = EXIT_EXPORT_MISMATCH


class ExportFailedError(FinishedRunError):
    """An export could not be written (e.g. a converter failed); every other output was written."""

    exit_code = EXIT_MODEL


def require(flag: str, value: object, valid: bool, expected: str) -> None:
    """Check one flag's value: a UsageError "--flag must be <expected>. Received: <value>."

    Raises:
        UsageError: unless `valid`.
    """
    if not valid:
        raise UsageError(f"--{flag} must be {expected}. Received: {value!r}.")
