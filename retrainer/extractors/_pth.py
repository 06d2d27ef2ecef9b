"""Read a legacy (non-zip) PyTorch `.pth` state dict into NumPy arrays, without torch.

The legacy format is a sequence of pickles followed by raw storage bytes: magic number, protocol
version, system info, the pickled state dict (tensors refer to storages by key through
`persistent_load`), the list of storage keys, then for each key an int64 element count and the
little-endian data. The unpickler resolves only an allow-list of globals to harmless stand-ins, so
reading a file never runs code from it; anything else is refused with a `ModelError`.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import struct
from typing import Any, NamedTuple

import numpy as np

from retrainer.errors import ModelError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class _StateDict(dict[str, Any]):
    """Stands in for collections.OrderedDict; drops the `_metadata` attribute torch attaches."""

    def __setstate__(self, state: Any) -> None:
        pass


# Tuples: a pickle's BUILD opcode cannot set attributes on them (no __dict__, read-only fields).
class _StorageType(NamedTuple):
    dtype: np.dtype[Any]


class _StorageRef(NamedTuple):
    key: str
    dtype: np.dtype
    size: int


class _TensorRef(NamedTuple):
    """A tensor whose data is read later, once the storages that follow the pickles are known."""

    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: Any, offset: Any, shape: Any, stride: Any, *unused: Any) -> _TensorRef:
    """Stand-in for torch._utils._rebuild_tensor_v2 (requires_grad, hooks, metadata are dropped)."""
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("tensor without a storage")
    return _TensorRef(storage, int(offset), tuple(map(int, shape)), tuple(map(int, stride)))


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _StateDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only `_ALLOWED_GLOBALS`; records the storages tensors refer to."""

    def __init__(self, stream: io.BytesIO) -> None:
        super().__init__(stream)
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> _StorageRef:
        # ("storage", storage_type, key, location, element_count, view_metadata)
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _location, size, view = pid
        if not isinstance(storage_type, _StorageType) or view is not None:
            raise pickle.UnpicklingError("unsupported storage (type or view)")
        ref = _StorageRef(str(key), storage_type.dtype, int(size))
        if self.storages.setdefault(ref.key, ref) != ref:
            raise pickle.UnpicklingError(f"storage {ref.key} declared twice, differently")
        return ref


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read the tensors of a legacy-format PyTorch state dict.

    Args:
        path: a `.pth` file in the format of torch < 1.6 (later: `torch.save(state_dict, f,
            _use_new_zipfile_serialization=False)`).

    Returns:
        parameter name -> array (contiguous, native byte order, same dtype as the tensor).

    Raises:
        ModelError: unreadable, truncated or not a legacy state dict; or the pickle names a global
            outside the allow-list (the file is then refused, nothing from it runs).
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise ModelError(f"cannot read weights file {path}: {error.strerror or error}") from error
    if data[:2] == b"PK":
        raise ModelError(
            f"{path} is a zip-format torch file; expected the legacy (torch < 1.6) format"
        )
    stream = io.BytesIO(data)
    try:
        magic, protocol, sys_info = (_RestrictedUnpickler(stream).load() for _ in range(3))
        if magic != _LEGACY_MAGIC or protocol != _LEGACY_PROTOCOL:
            raise pickle.UnpicklingError("no legacy torch magic number / protocol version")
        if not (isinstance(sys_info, dict) and sys_info.get("little_endian") is True):
            raise pickle.UnpicklingError("not written on a little-endian machine")
        state_unpickler = _RestrictedUnpickler(stream)
        state = state_unpickler.load()
        keys = _RestrictedUnpickler(stream).load()
    except _RefusedGlobal as error:
        raise ModelError(
            f"refusing to load {path}: it references the global {error}, which is not allowed in "
            "a weights file"
        ) from None
    except Exception as error:  # a broken pickle can raise almost anything; none of it is a bug
        raise ModelError(
            f"{path} is corrupt or not a legacy (torch < 1.6) PyTorch weights file "
            f"({type(error).__name__}: {error})"
        ) from None
    if not isinstance(state, dict) or not isinstance(keys, list):
        raise ModelError(f"{path} does not hold a state dict")
    storages = _read_storages(path, data, stream.tell(), keys, state_unpickler.storages)
    return {str(name): _tensor_array(path, str(name), ref, storages) for name, ref in state.items()}


def _read_storages(
    path: Any, data: bytes, position: int, keys: list[Any], refs: dict[str, _StorageRef]
) -> dict[str, np.ndarray]:
    """Each storage: int64 element count, then count * itemsize bytes (flat, little-endian)."""
    storages = {}
    for key in map(str, keys):
        ref = refs.get(key)
        if ref is None:
            raise ModelError(f"{path}: storage {key} is listed but no tensor declares it")
        if position + 8 > len(data):
            raise ModelError(f"{path} is truncated (storage {key} missing)")
        (count,) = struct.unpack_from("<q", data, position)
        end = position + 8 + count * ref.dtype.itemsize
        if count != ref.size or count < 0 or end > len(data):
            raise ModelError(f"{path} is truncated or corrupt (storage {key})")
        storages[key] = np.frombuffer(data, ref.dtype, count, position + 8)
        position = end
    return storages


def _tensor_array(path: Any, name: str, ref: Any, storages: dict[str, np.ndarray]) -> np.ndarray:
    if not isinstance(ref, _TensorRef):
        raise ModelError(f"{path}: entry {name!r} is not a tensor")
    storage = storages.get(ref.storage.key)
    if storage is None:
        raise ModelError(f"{path}: storage of {name!r} is missing")
    if len(ref.shape) != len(ref.stride) or min((*ref.shape, *ref.stride, ref.offset)) < 0:
        raise ModelError(f"{path}: tensor {name!r} has an invalid shape or stride")
    count = math.prod(ref.shape)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
    # The count limit also stops zero strides from expanding a tiny storage into a huge array.
    if count and (last >= storage.size or count > storage.size):
        raise ModelError(f"{path}: tensor {name!r} lies outside its storage")
    view = np.lib.stride_tricks.as_strided(
        storage[ref.offset:],
        shape=ref.shape,
        strides=tuple(s * storage.itemsize for s in ref.stride),
        writeable=False,
    )
    return np.array(view, dtype=storage.dtype.newbyteorder("="))
