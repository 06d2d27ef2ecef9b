"""Checking a frozen GraphDef (.pb): every node, and every function of its library."""

from __future__ import annotations

from typing import Optional

from retrainer.formats.frozen_graph import parse_graph_def
from retrainer.io.storage import AnyPath
from retrainer.security.allowlist import ALLOWED_OPS
from retrainer.security.limits import Budget
from retrainer.security.tf_graph import GraphCheck


def check_frozen_graph(path: AnyPath, data: bytes, budget: Budget,
                       allowed: Optional[frozenset[str]] = ALLOWED_OPS) -> set[str]:
    """Refuse the graph in `data` (read from `path`) unless every op in it is allowed.

    Args:
        allowed: the allowlist; None: refuse nothing, list the ops.

    Returns:
        With `allowed=None`, the ops the graph holds.

    Raises:
        UntrustedModelError: an op outside the allowlist, a declared size over a limit.
        ModelError: not a GraphDef.
    """
    graph = GraphCheck(parse_graph_def(path, data), path, allowed=allowed)
    graph.check_every_node()
    graph.check_sizes(budget)
    return graph.ops
