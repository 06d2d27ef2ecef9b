"""Read a TFRecord file of equal-length records as one uint8 [n, L] numpy matrix, CRCs checked;
frame records for writing one.

Shard runs hold fixed-layout records (a 64-character hash and D float32s), so every record has
the same length and its fields sit at the same byte offsets. Reading the whole file once and
viewing it as a matrix gives columns without a Python object per record: 100k vectors load in a
fraction of the time tf.data's per-record strings take (benchmarks/bench_beam.py).

TFRecord framing, per record: uint64 length, uint32 masked CRC-32C of the length, the data,
uint32 masked CRC-32C of the data (all little-endian).
"""

from __future__ import annotations

from typing import Optional

import google_crc32c
import numpy as np
import tensorflow as tf

_HEADER = 12  # length + its CRC
_FOOTER = 4   # the data's CRC
_MASK_DELTA = 0xA282EAD8


def read_equal_length_records(path: str) -> Optional[tuple[bytes, np.ndarray]]:
    """The records of one TFRecord file, if they all have the same length.

    Args:
        path: a local or remote (tf.io.gfile) path.

    Returns:
        (the file's bytes, which the matrix views; uint8 [n, L] read-only, one row per record's
        data), or None when record lengths differ (read it record by record instead).

    Raises:
        ValueError: truncated file or a CRC mismatch (a corrupt shard).
    """
    data = _read_whole(path)
    if not data:
        return data, np.zeros((0, 0), np.uint8)
    if len(data) < _HEADER:
        raise ValueError(f"{path}: truncated TFRecord file")
    length = int.from_bytes(data[:8], "little")
    stride = _HEADER + length + _FOOTER
    if len(data) % stride:
        return None  # unequal lengths, or truncated: the record-by-record reader tells which
    flat = np.frombuffer(data, np.uint8)  # read-only, as google_crc32c wants (not a memoryview)
    frames = flat.reshape(-1, stride)
    lengths = frames[:, :8].copy().view("<u8")[:, 0]
    if (lengths != length).any():
        return None
    if int(frames[0, 8:12].copy().view("<u4")[0]) != _masked_crc(flat[:8]):
        raise ValueError(f"{path}: corrupt TFRecord length")
    stored = frames[:, _HEADER + length:].copy().view("<u4")[:, 0]
    computed = np.fromiter(
        (google_crc32c.value(flat[start:start + length])
         for start in range(_HEADER, len(data), stride)),
        np.uint64, count=len(frames))
    if (_mask(computed) != stored).any():
        raise ValueError(f"{path}: corrupt TFRecord data (CRC mismatch)")
    return data, frames[:, _HEADER:_HEADER + length]


def framed(record: bytes) -> bytes:
    """`record` in its TFRecord frame (above): what a TFRecord file holds for it."""
    length = len(record).to_bytes(8, "little")
    return b"".join((length, _masked_crc(length).to_bytes(4, "little"), record,
                     _masked_crc(record).to_bytes(4, "little")))


def _read_whole(path: str) -> bytes:
    """A file's bytes: Python's own read for local paths (a third of GFile's time, measured on
    500 MB), tf.io.gfile for remote ones (gs://, ram://, ...)."""
    if "://" not in path:
        with open(path, "rb") as stream:
            return stream.read()
    with tf.io.gfile.GFile(path, "rb") as stream:
        return stream.read()


def _masked_crc(chunk: bytes | np.ndarray) -> int:
    return int(_mask(np.array([google_crc32c.value(chunk)], np.uint64))[0])


def _mask(crcs: np.ndarray) -> np.ndarray:
    """TFRecord's masked CRC: rotate right by 15 bits, add a constant (uint64 in, uint32 out)."""
    rotated = ((crcs >> np.uint64(15)) | (crcs << np.uint64(17))) & np.uint64(0xFFFFFFFF)
    return ((rotated + np.uint64(_MASK_DELTA)) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
