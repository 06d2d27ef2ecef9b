"""The one-line error for a refused model: what was found, where, and how to trust the file."""

from __future__ import annotations

from typing import Optional

from retrainer.errors import UntrustedModelError

TRUST_HINT = ("If you trust this file, rerun with --trust_model (Python: trust_model=True); "
              "see docs/security.md")


def refused(model_file: object, problem: str, node: Optional[str] = None,
            function: Optional[str] = None) -> UntrustedModelError:
    """UntrustedModelError: "model file F is refused, nothing in it was run: PROBLEM (node N in
    function G). If you trust this file, ..."

    Args:
        model_file: the file that holds the offending part (saved_model.pb, not its folder).
        problem: what is wrong, e.g. "op WriteFile (writes files) is not on the allowlist".
        node / function: where it is, when it is a node of a graph or function.
    """
    where = ""
    if node is not None:
        where = f" (node {node!r}" + (f" in function {function!r}" if function else "") + ")"
    return UntrustedModelError(
        f"model file {model_file} is refused, nothing in it was run: {problem}{where}. {TRUST_HINT}"
    )
