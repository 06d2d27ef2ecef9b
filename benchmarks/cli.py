"""The command line every benchmark starts from: its module docstring as help, and `--smoke`.

`--smoke` runs the benchmark's whole code path on tiny inputs (a few images, one round) so that
the slow test suite can run every benchmark in seconds; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Optional, Sequence

# Before any benchmark imports TensorFlow: its C++ start-up chatter is not a figure.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def parser(doc: Optional[str]) -> argparse.ArgumentParser:
    """An argument parser whose help is `doc` (the benchmark's module docstring), with --smoke."""
    result = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    result.add_argument("--smoke", action="store_true",
                        help="tiny inputs, to check that the benchmark runs (figures meaningless)")
    return result


def parse(arguments: argparse.ArgumentParser, smoke: dict[str, Any],
          argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse `argv`; with --smoke, the options named in `smoke` take those tiny values.

    Args:
        arguments: from `parser`, with the benchmark's own options added.
        smoke: option destination -> its value in a smoke run (e.g. {"images": 20}).
        argv: the arguments (default: sys.argv[1:]).

    Returns:
        The parsed namespace.
    """
    known = {action.dest for action in arguments._actions}
    unknown = sorted(set(smoke) - known)
    if unknown:
        raise ValueError(f"smoke values for options the benchmark lacks: {unknown}")
    namespace = arguments.parse_args(argv)
    if namespace.smoke:
        for name, value in smoke.items():
            setattr(namespace, name, value)
    return namespace
