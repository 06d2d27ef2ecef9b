"""Reading fields of a flatbuffer table by slot number, with `flatbuffers` alone (no TensorFlow).

Shared by the TFLite metadata reader (`formats.tflite_metadata`) and the model check
(`security.tflite`). A slot is the field's position in its schema table; an absent field reads as
empty (0, "", []) except where a function says it raises.
"""

from __future__ import annotations

from typing import Any

import flatbuffers
from flatbuffers.table import Table


def root(data: bytes) -> Table:
    """The root table of the flatbuffer `data`."""
    return Table(bytearray(data), flatbuffers.encode.Get(flatbuffers.packer.uoffset, data, 0))


def position(table: Table, slot: int) -> int:
    """The field's offset in its table, 0 when absent."""
    return int(table.Offset(4 + 2 * slot))


def table(parent: Table, slot: int) -> Table:
    """A table field; ValueError when absent."""
    offset = position(parent, slot)
    if not offset:
        raise ValueError(f"flatbuffer table lacks field {slot}")
    return Table(parent.Bytes, parent.Indirect(parent.Pos + offset))


def tables(parent: Table, slot: int) -> list[Table]:
    """A vector of tables."""
    offset = position(parent, slot)
    if not offset:
        return []
    start = parent.Vector(offset)
    return [Table(parent.Bytes, parent.Indirect(start + 4 * index))
            for index in range(parent.VectorLen(offset))]


def numbers(parent: Table, slot: int, flags: Any) -> list[Any]:
    """A vector of numbers of `flags` (`flatbuffers.number_types.*Flags`)."""
    offset = position(parent, slot)
    return parent.GetVectorAsNumpy(flags, offset).tolist() if offset else []


def scalar(parent: Table, slot: int, flags: Any) -> int:
    """A scalar field of `flags`, 0 when absent."""
    offset = position(parent, slot)
    return int(parent.Get(flags, parent.Pos + offset)) if offset else 0


def string(parent: Table, slot: int) -> str:
    """A string field, "" when absent."""
    offset = position(parent, slot)
    return parent.String(parent.Pos + offset).decode("utf-8") if offset else ""
