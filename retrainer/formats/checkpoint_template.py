"""TensorFlow checkpoints of a fixed set of variables written without TensorFlow, from a template.

A checkpoint (`tf.train.Checkpoint.write`) is two files: `.data-00000-of-00001`, each tensor's
bytes at a fixed offset, and `.index`, a LevelDB table mapping each variable's key to its dtype,
shape, offset, size and masked CRC-32C, in data blocks that each end with a masked CRC-32C. Two
checkpoints of the same variables with the same shapes differ only in the tensors' bytes and
those checksums. So a checkpoint TensorFlow wrote once serves as a template: later checkpoints
put the new bytes at the same offsets and recompute the checksums (CRC-32C by `google_crc32c`).
A template is made only when every checksum it holds is the one recomputed here. A template is
(header, body): the JSON-ready layout (each tensor's entry, the index's data blocks, the index's
size) and the two files' bytes, kept sealed in the user's cache (`cache.memo.Memo.write_sealed`:
checked whole before use).
"""

from __future__ import annotations

import struct
from typing import Any, Mapping, Optional

import google_crc32c
import numpy as np

from retrainer.formats.protobuf_wire import FIXED32, FIXED64, VARINT, fields, varint

# A template: (header {"entries", "blocks", "index_size"}, the .index then the .data bytes).
Template = tuple[dict[str, Any], bytes]
_TABLE_MAGIC = 0xDB4775248B80FB57  # LevelDB's table footer
_FOOTER = 48
_TRAILER = 5  # a block's compression type byte, then its masked CRC-32C
_MASK_DELTA = 0xA282EAD8


def make_template(index: bytes, data: bytes, tensors: Mapping[str, np.ndarray]
                  ) -> Optional[Template]:
    """The template of a checkpoint (its `.index` and `.data` files' bytes) that holds
    `tensors` ({key: array}, e.g. "head/weights/.ATTRIBUTES/VARIABLE_VALUE"); None when its
    layout is not the one read here or a tensor is not where its entry says."""
    try:
        entries, blocks = _layout(index)
    except (IndexError, ValueError, struct.error):
        return None
    for key, array in tensors.items():
        if key not in entries:
            return None
        offset, size, _ = entries[key]
        if data[offset:offset + size] != np.ascontiguousarray(array).tobytes():
            return None
    for key in tensors:  # their checksums are computed as here
        offset, size, crc_at = entries[key]
        if index[crc_at:crc_at + 4] != _masked_crc(data[offset:offset + size]):
            return None
    for start, size in blocks:
        if index[start + size + 1:start + size + _TRAILER] != _masked_crc(
                index[start:start + size + 1]):
            return None
    return ({"entries": {key: entries[key] for key in tensors}, "blocks": blocks,
             "index_size": len(index)}, index + data)


def fill_template(template: Template, tensors: Mapping[str, np.ndarray]
                  ) -> Optional[tuple[bytes, bytes]]:
    """(.index bytes, .data bytes) of the checkpoint holding `tensors` (the keys the template
    was made with, same dtypes and shapes); None when the template does not fit them."""
    header, body = template
    entries, blocks, index_size = header["entries"], header["blocks"], header["index_size"]
    if set(entries) != set(tensors):
        return None
    index, data = bytearray(body[:index_size]), bytearray(body[index_size:])
    for key, (offset, size, crc_at) in entries.items():
        content = np.ascontiguousarray(tensors[key]).tobytes()
        if len(content) != size:
            return None
        data[offset:offset + size] = content
        index[crc_at:crc_at + 4] = _masked_crc(content)
    for start, size in blocks:
        index[start + size + 1:start + size + _TRAILER] = _masked_crc(
            bytes(index[start:start + size + 1]))
    return bytes(index), bytes(data)


def _masked_crc(content: bytes) -> bytes:
    """LevelDB's and TensorFlow's masked CRC-32C, little-endian."""
    crc = google_crc32c.value(content)
    return ((((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF).to_bytes(4, "little")


def _layout(index: bytes) -> tuple[dict[str, tuple[int, int, int]], list[tuple[int, int]]]:
    """{key: (offset, size, where its CRC sits in `index`)} and the data blocks' (start, size)."""
    footer = len(index) - _FOOTER
    if struct.unpack_from("<Q", index, len(index) - 8)[0] != _TABLE_MAGIC:
        raise ValueError("not a table")
    _, position = varint(index, footer)  # the metaindex block
    _, position = varint(index, position)
    start, position = varint(index, position)
    size, _ = varint(index, position)
    entries: dict[str, tuple[int, int, int]] = {}
    blocks = []
    for _, handle, _ in _block_entries(index, start, size):
        block_start, after = varint(index, handle)
        block_size, _ = varint(index, after)
        blocks.append((block_start, block_size))
        for key, value, value_end in _block_entries(index, block_start, block_size):
            if key:  # the empty key holds the bundle's header, not a tensor
                entries[key.decode()] = _bundle_entry(index, value, value_end)
    return entries, blocks


def _block_entries(table: bytes, start: int, size: int) -> list[tuple[bytes, int, int]]:
    """A table block's (key, value start, value end), keys rebuilt from their shared prefixes."""
    restarts = struct.unpack_from("<I", table, start + size - 4)[0]
    end = start + size - 4 - 4 * restarts
    position, key, entries = start, b"", []
    while position < end:
        shared, position = varint(table, position)
        unshared, position = varint(table, position)
        length, position = varint(table, position)
        key = key[:shared] + table[position:position + unshared]
        position += unshared
        entries.append((key, position, position + length))
        position += length
    return entries


def _bundle_entry(table: bytes, position: int, end: int) -> tuple[int, int, int]:
    """A BundleEntryProto's (offset, size, position of its crc32c field)."""
    numbers = {4: 0, 5: 0}
    crc_at = -1
    for number, wire, _, value, _ in fields(table, position, end):
        if wire == VARINT:
            numbers[number] = varint(table, value)[0]
        elif wire == FIXED32 and number == 6:
            crc_at = value
        elif wire == FIXED64:
            raise ValueError(f"wire type {wire}")
    if crc_at < 0:
        raise ValueError("no checksum")
    return numbers[4], numbers[5], crc_at
