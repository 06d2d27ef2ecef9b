"""Protocol Buffers' wire format, read directly: for files whose few known fields are found or
rewritten in place (a frozen graph's nodes, a checkpoint index's entries) without parsing the
whole message with a generated class."""

from __future__ import annotations

from typing import Iterator, Union

Buffer = Union[bytes, bytearray, memoryview]
VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5  # wire types


def fields(data: Buffer, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, where the field starts, where its value starts, where it ends)
    of each field of the message serialized in data[start:end].

    Raises:
        ValueError: a group (wire types 3 and 4, unused by proto3) or a field running past `end`.
    """
    position = start
    while position < end:
        field_start = position
        tag, position = varint(data, position)
        kind = tag & 7
        if kind == VARINT:
            value = position
            _, position = varint(data, position)
        elif kind == LENGTH_DELIMITED:
            length, value = varint(data, position)
            position = value + length
        elif kind in (FIXED64, FIXED32):
            value, position = position, position + (8 if kind == FIXED64 else 4)
        else:
            raise ValueError(f"a field of wire type {kind}")
        if position > end:
            raise ValueError("a truncated message")
        yield tag >> 3, kind, field_start, value, position


def varint(data: Buffer, position: int) -> tuple[int, int]:
    """The varint at `position` and where the next field starts."""
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
