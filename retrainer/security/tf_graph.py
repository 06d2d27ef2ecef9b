"""Which ops a TensorFlow graph would run, read from its GraphDef and function library.

Protobuf reading only: nothing is imported into TensorFlow or run. A node runs an op, or calls a
function of the library by name; an op's function-valued attributes (`f` of a call, `body` and
`cond` of a loop, the branches of `If`/`Case`, ...) run more functions. Every op reached must be
on the allowlist, except the variable-restore ops of a TF1 saver, which may read only the file
the loader feeds them (the model's own `variables/` folder).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Iterable, Iterator, Optional

from retrainer.security.allowlist import ALLOWED_OPS, RESTORE_OPS, describe
from retrainer.security.declared_sizes import check_declared_sizes
from retrainer.security.limits import Budget
from retrainer.security.refusal import refused


class GraphCheck:
    """Checks one GraphDef (a frozen graph, or a MetaGraph's graph) and the functions it reaches.

    Args:
        graph_def: a tensorflow GraphDef message.
        model_file: the file it was read from, for messages.
        restore_prefix: the tensor (TF1 saver's filename tensor) that restore ops may read from;
            None: no restore op is allowed.
        allowed: the allowlist; None allows every op (to list what a model uses, in `ops`).

    Attributes:
        ops: every op name checked so far.
    """

    def __init__(self, graph_def: Any, model_file: object, restore_prefix: Optional[str] = None,
                 allowed: Optional[frozenset[str]] = ALLOWED_OPS) -> None:
        self.graph_def = graph_def
        self.allowed = allowed
        self.ops: set[str] = set()
        self.model_file = model_file
        self.nodes = {node.name: node for node in graph_def.node}
        self.functions = {function.signature.name: function
                          for function in graph_def.library.function}
        self.restore_prefix = _node_of(restore_prefix) if restore_prefix else None
        self._checked_functions: set[str] = set()

    def check_every_node(self) -> None:
        """Every node of the graph and every function of its library (a frozen graph)."""
        for node in self.graph_def.node:
            self._check_node(node)
        for name in self.functions:
            self.check_function(name)

    def check_reachable(self, roots: Iterable[str]) -> None:
        """The nodes `roots` (op or tensor names) depend on, through data and control inputs."""
        queue = deque(_node_of(root) for root in roots)
        seen = set(queue)
        while queue:
            node = self.nodes.get(queue.popleft())
            if node is None:  # a name the loader will fail to find: nothing of it runs
                continue
            self._check_node(node)
            for source in node.input:
                name = _node_of(source)
                if name not in seen:
                    seen.add(name)
                    queue.append(name)

    def check_function(self, name: str, caller: Optional[str] = None,
                       caller_function: Optional[str] = None) -> None:
        """Every node of library function `name` and the functions it reaches."""
        if name in self._checked_functions:
            return
        function = self.functions.get(name)
        if function is None:
            raise refused(self.model_file, f"it calls function {name!r}, which it does not define",
                          caller, caller_function)
        self._checked_functions.add(name)
        for node in function.node_def:
            self._check_node(node, name)

    def check_gradients(self) -> None:
        """Gradient functions the library registers (fine-tuning runs them)."""
        library = self.graph_def.library
        for gradient in library.gradient:
            self.check_function(gradient.gradient_func)
        for registered in library.registered_gradients:
            self.check_function(registered.gradient_func)

    def check_sizes(self, budget: Budget) -> None:
        """Constants, variables and fixed shapes of the graph and every library function."""
        scopes = [(None, self.graph_def.node)]
        scopes += [(name, function.node_def) for name, function in self.functions.items()]
        for function_name, nodes in scopes:
            found = check_declared_sizes(nodes, budget)
            if found is not None:
                node, problem = found
                raise refused(self.model_file, problem, node.name, function_name)

    def _check_node(self, node: Any, function: Optional[str] = None) -> None:
        op = node.op
        if op in self.functions:  # a direct call of a library function
            self.check_function(op, node.name, function)
        elif self.allowed is None:  # listing, not checking
            self.ops.add(op)
        elif op in RESTORE_OPS:
            self._check_restore(node, function)
        elif op not in self.allowed:
            raise refused(self.model_file,
                          f"op {describe(op)} is not on the allowlist of side-effect-free ops",
                          node.name, function)
        for name in _called_functions(node.attr.values()):
            self.check_function(name, node.name, function)

    def _check_restore(self, node: Any, function: Optional[str]) -> None:
        """A restore op may only read the file the loader feeds the saver's filename tensor."""
        in_graph = node.input and function is None
        prefix = self._through_identities(node.input[0]) if in_graph else None
        if self.restore_prefix is None or prefix != self.restore_prefix:
            raise refused(
                self.model_file,
                f"op {node.op} reads variables from a path the model chooses, not from its own "
                "variables/ folder",
                node.name, function,
            )

    def _through_identities(self, name: str) -> str:
        node_name = _node_of(name)
        for _ in range(len(self.nodes)):
            node = self.nodes.get(node_name)
            if node is None or node.op != "Identity" or not node.input:
                break
            node_name = _node_of(node.input[0])
        return node_name


def _called_functions(attrs: Iterable[Any]) -> Iterator[str]:
    """Names of the functions in function-valued attributes (and in their own attributes)."""
    for attr in attrs:
        kind = attr.WhichOneof("value")
        if kind == "func":
            yield attr.func.name
            yield from _called_functions(attr.func.attr.values())
        elif kind == "list":
            for func in attr.list.func:
                yield func.name
                yield from _called_functions(func.attr.values())


def _node_of(name: str) -> str:
    """"^node", "node:0", "node:output:0" -> "node"."""
    return name.lstrip("^").split(":")[0]
