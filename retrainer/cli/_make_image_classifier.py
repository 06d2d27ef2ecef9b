"""make_image_classifier's flags that have no meaning here (`config.UNSUPPORTED_FLAGS`): each stops
`retrain` with one line naming what to use instead (exit 2), rather than click's "No such option".

The flags whose meaning maps are real options of `retrain` (docs/migrating.md):
`--labels_output_file`, `--batch_size` (other names for --output_labels, --train_batch_size),
`--train_epochs` and `--validation_split` (RetrainConfig fields).
"""

from __future__ import annotations

import functools
from typing import Any

import click

from retrainer.cli import F
from retrainer.config import UNSUPPORTED_FLAGS, unsupported_flag_error


def refuses_make_image_classifier_flags(command: F) -> F:
    """Accept the unsupported flags (hidden from --help, with or without a value) and stop with
    their UsageError when one is given. Apply below `reports_errors`, which prints it."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = [name for name in UNSUPPORTED_FLAGS if kwargs.pop(name, None) is not None]
        if given:
            raise unsupported_flag_error(given[0])
        return command(*args, **kwargs)

    for name in UNSUPPORTED_FLAGS:  # absl style: "--flag", "--flag=value" or "--flag value"
        wrapper = click.option(f"--{name}", name, hidden=True, is_flag=False, flag_value="true",
                               default=None)(wrapper)
    return wrapper  # type: ignore[return-value]
