"""Frozen graphs written without TensorFlow: a traced graph with its run's constants taken out.

Two frozen graphs of the same structure (extractor, input size, --tta mode, objective, output
names, novelty's k) differ only in the constants a run fits: the head's weights float32 [D, C]
and biases [C], and the novelty references float32 [M, D]. So the first graph TensorFlow traces
of a structure is kept per machine as a template, those Const nodes emptied, and later graphs are
written by putting the new arrays in, with the `protobuf` package alone: a minimal schema of
GraphDef / NodeDef / AttrValue / TensorProto / TensorShapeProto (the fields touched here; every
other field passes through as an unknown field, in order), serialized deterministically as
TensorFlow serializes the graphs it writes. A template is kept only when filling it with the
traced graph's own arrays gives back the traced bytes exactly. A template is (header, body): the
JSON-ready {"roles": {Const node name: role}} and the emptied graph's bytes, kept sealed in the
user's cache (`cache.memo.Memo.write_sealed`: checked whole before use).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Optional

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from retrainer.formats.protobuf_wire import fields

# The arrays a template takes, by role.
WEIGHTS, BIASES, NOVELTY_REFERENCES = "weights", "biases", "novelty_references"
_FLOAT32 = 1  # TensorFlow's DT_FLOAT
_NODE, _NAME = 1, 1  # GraphDef.node's field number, NodeDef.name's
# A template: (header {"roles": {node name: role}}, the graph's bytes with those nodes emptied).
Template = tuple[dict[str, Any], bytes]


@functools.lru_cache(maxsize=1)
def _graph_def_class() -> Any:
    """The GraphDef message class of the minimal schema (its own descriptor pool, so it never
    clashes with TensorFlow's classes when both are loaded)."""
    schema = descriptor_pb2.FileDescriptorProto(name="retrainer_graph.proto",
                                                package="retrainer_graph", syntax="proto3")
    F = descriptor_pb2.FieldDescriptorProto
    optional, repeated = F.LABEL_OPTIONAL, F.LABEL_REPEATED

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> Any:
        added = schema.message_type.add(name=name)
        for field_name, number, label, kind, type_name in fields:
            field = added.field.add(name=field_name, number=number, label=label, type=kind)
            if type_name:
                field.type_name = type_name
        return added

    message("Dim", ("size", 1, optional, F.TYPE_INT64, ""),
            ("name", 2, optional, F.TYPE_STRING, ""))
    message("TensorShapeProto", ("dim", 2, repeated, F.TYPE_MESSAGE, ".retrainer_graph.Dim"),
            ("unknown_rank", 3, optional, F.TYPE_BOOL, ""))
    message("TensorProto", ("dtype", 1, optional, F.TYPE_INT32, ""),
            ("tensor_shape", 2, optional, F.TYPE_MESSAGE, ".retrainer_graph.TensorShapeProto"),
            ("version_number", 3, optional, F.TYPE_INT32, ""),
            ("tensor_content", 4, optional, F.TYPE_BYTES, ""))
    message("AttrValue", ("tensor", 8, optional, F.TYPE_MESSAGE, ".retrainer_graph.TensorProto"))
    node = message("NodeDef", ("name", 1, optional, F.TYPE_STRING, ""),
                   ("op", 2, optional, F.TYPE_STRING, ""),
                   ("input", 3, repeated, F.TYPE_STRING, ""),
                   ("device", 4, optional, F.TYPE_STRING, ""),
                   ("attr", 5, repeated, F.TYPE_MESSAGE, ".retrainer_graph.NodeDef.AttrEntry"))
    entry = node.nested_type.add(name="AttrEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, label=optional, type=F.TYPE_STRING)
    entry.field.add(name="value", number=2, label=optional, type=F.TYPE_MESSAGE,
                    type_name=".retrainer_graph.AttrValue")
    message("GraphDef", ("node", 1, repeated, F.TYPE_MESSAGE, ".retrainer_graph.NodeDef"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(schema)
    graph_def = pool.FindMessageTypeByName("retrainer_graph.GraphDef")
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(graph_def)
    return message_factory.MessageFactory(pool).GetPrototype(graph_def)  # protobuf < 4.22


def make_template(graph: bytes, arrays: Mapping[str, np.ndarray]) -> Optional[Template]:
    """The template of a traced frozen graph (its serialized bytes) whose run's `arrays` ({role:
    float32 array}) each fill exactly one Const node; None when they do not, or when filling the
    template with them would not give `graph` back."""
    graph_def = _graph_def_class()()
    graph_def.ParseFromString(graph)
    roles: dict[str, str] = {}
    for role, array in arrays.items():
        content = np.ascontiguousarray(array, np.float32).tobytes()
        nodes = [node for node in graph_def.node if node.op == "Const"
                 and node.attr["value"].tensor.tensor_content == content]
        if len(nodes) != 1:
            return None
        roles[nodes[0].name] = role
        _set_tensor(nodes[0], np.zeros((0,) * np.ndim(array), np.float32))
    template = ({"roles": roles}, graph_def.SerializeToString(deterministic=True))
    return template if fill_template(template, arrays) == graph else None


def fill_template(template: Template, arrays: Mapping[str, np.ndarray]) -> Optional[bytes]:
    """The frozen graph's bytes: `template` (`make_template`) with `arrays` ({role: float32
    array}, the roles it was made with) put in; None when it takes other roles.

    Only the role nodes are parsed and serialized again; every other byte is the template's:
    it is a deterministic serialization already, which parsing and serializing would give back
    unchanged (a cold 1,000-image run's 17 MB graph: 18 ms instead of 43 ms, most of it now its
    novelty references' node; protobuf's work holds the interpreter lock beside the report's
    heat maps)."""
    header, body = template
    roles = dict(header["roles"])
    if set(roles.values()) != set(arrays):
        return None
    view = memoryview(body)
    pieces: list[bytes | memoryview] = []
    filled = set()
    for number, _, start, value, end in fields(view, 0, len(body)):
        name = _node_name(view, value, end) if number == _NODE else None
        if name in roles:
            graph_def = _graph_def_class().FromString(view[start:end])  # this node alone
            _set_tensor(graph_def.node[0], np.asarray(arrays[roles[name]], np.float32))
            pieces.append(graph_def.SerializeToString(deterministic=True))
            filled.add(name)
        else:
            pieces.append(view[start:end])
    if filled != set(roles):
        return None
    return b"".join(pieces)


def _node_name(data: memoryview, start: int, end: int) -> Optional[str]:
    """The name of the NodeDef serialized in data[start:end] (its field 1), if it has one."""
    for number, _, _, value, field_end in fields(data, start, end):
        if number == _NAME:
            return bytes(data[value:field_end]).decode("utf-8", "replace")
    return None


def _set_tensor(node: Any, array: np.ndarray) -> None:
    """A Const node's value becomes float32 `array` (as TensorFlow writes it: the bytes in
    tensor_content)."""
    tensor = node.attr["value"].tensor
    tensor.Clear()
    tensor.dtype = _FLOAT32
    for size in array.shape:
        tensor.tensor_shape.dim.add(size=size)
    if not array.shape:  # a scalar's shape is present and empty
        tensor.tensor_shape.SetInParent()
    tensor.tensor_content = np.ascontiguousarray(array, np.float32).tobytes()
