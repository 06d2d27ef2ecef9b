"""The torch-free, code-free reader of legacy `.pth` files.

Files are written here opcode by opcode (the pickle module's opcode constants), so the expected
arrays come from NumPy, not from the reader, and hostile files are written but never unpickled
with plain `pickle`.
"""

from __future__ import annotations

import pickle
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from retrainer.errors import EXIT_MODEL, ModelError
from retrainer.extractors._pth import read_state_dict
from retrainer.extractors.efficientnet_lite import VARIANTS, weights_path

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
NOT_LEGACY = r"is corrupt or not a legacy \(torch < 1.6\) PyTorch weights file"


def _value(value) -> bytes:
    """Opcodes for a plain value (no globals): a protocol-2 pickle without PROTO and STOP."""
    return pickle.dumps(value, protocol=2)[2:-1]


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _tensor(key: str, storage_type: str, count: int, offset: int, shape: tuple, stride: tuple,
            storage_global: bytes | None = None) -> bytes:
    """torch._utils._rebuild_tensor_v2(storage, offset, shape, stride, False, OrderedDict())."""
    storage_global = storage_global or _global("torch", storage_type)
    storage_id = (pickle.MARK + _value("storage") + storage_global + _value(key) + _value("cpu")
                  + _value(count) + pickle.NONE + pickle.TUPLE)
    return (_global("torch._utils", "_rebuild_tensor_v2") + pickle.MARK + storage_id
            + pickle.BINPERSID
            + _value(offset) + _value(shape) + _value(stride) + pickle.NEWFALSE
            + _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
            + pickle.TUPLE + pickle.REDUCE)


def _state_dict(entries: list[tuple[str, bytes]]) -> bytes:
    """OrderedDict() filled with SETITEMS: (name, value opcodes) pairs."""
    items = b"".join(_value(name) + value for name, value in entries)
    return (pickle.PROTO + b"\x02" + _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE
            + pickle.REDUCE + pickle.MARK + items + pickle.SETITEMS + pickle.STOP)


def _legacy_file(state_pickle: bytes, storages: dict[str, np.ndarray]) -> bytes:
    header = b"".join(pickle.dumps(value, protocol=2) for value in (
        LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True,
                             "type_sizes": {"short": 2, "int": 4, "long": 4}}))
    data = b"".join(struct.pack("<q", array.size) + array.astype(array.dtype.newbyteorder("<"))
                    .tobytes() for array in storages.values())
    return header + state_pickle + pickle.dumps(list(storages), protocol=2) + data


def _write(tmp_path: Path, content: bytes, name: str = "weights.pth") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.fixture
def lite0_pth() -> Path:
    return weights_path(VARIANTS["efficientnet_lite0"])


def test_reads_tensors_with_dtypes_offsets_and_strides(tmp_path):
    shared = np.arange(12, dtype=np.float32) * 0.5
    longs = np.array([7, -3], dtype=np.int64)
    halves = np.array([1.5, -2.25, 1024.0], dtype=np.float16)
    state = _state_dict([
        ("matrix", _tensor("1", "FloatStorage", 12, 0, (3, 4), (4, 1))),
        ("transposed", _tensor("1", "FloatStorage", 12, 0, (4, 3), (1, 4))),
        ("tail_vector", _tensor("1", "FloatStorage", 12, 8, (4,), (1,))),
        ("scalar", _tensor("2", "LongStorage", 2, 1, (), ())),
        ("halves", _tensor("3", "HalfStorage", 3, 0, (3,), (1,))),
    ])
    path = _write(tmp_path, _legacy_file(state, {"1": shared, "2": longs, "3": halves}))

    arrays = read_state_dict(path)

    assert list(arrays) == ["matrix", "transposed", "tail_vector", "scalar", "halves"]
    np.testing.assert_array_equal(arrays["matrix"], shared.reshape(3, 4))
    np.testing.assert_array_equal(arrays["transposed"], shared.reshape(3, 4).T)
    np.testing.assert_array_equal(arrays["tail_vector"], shared[8:])
    assert arrays["scalar"].shape == () and arrays["scalar"] == -3
    assert arrays["scalar"].dtype == np.int64
    np.testing.assert_array_equal(arrays["halves"], halves)
    assert arrays["halves"].dtype == np.float16


def test_reads_the_packaged_lite0_weights_fast_and_without_torch(lite0_pth):
    start = time.perf_counter()
    arrays = read_state_dict(lite0_pth)
    elapsed = time.perf_counter() - start

    assert elapsed < 1.0
    assert "torch" not in sys.modules
    assert len(arrays) == 296
    assert arrays["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert arrays["_fc.weight"].shape == (1000, 1280)
    assert arrays["_fc.weight"].dtype == np.float32
    assert arrays["_bn0.num_batches_tracked"].dtype == np.int64
    variances = [value for name, value in arrays.items() if name.endswith("running_var")]
    assert len(variances) == 49 and all((value >= 0).all() for value in variances)


@pytest.mark.parametrize(
    "module, name",
    [("posix", "system"), ("os", "system"), ("builtins", "eval"), ("subprocess", "check_output")],
)
def test_refuses_a_pickle_that_calls_a_global_outside_the_allow_list(tmp_path, module, name):
    marker = tmp_path / "pwned"
    command = f"touch {marker}" if name != "eval" else f"open({str(marker)!r}, 'w')"
    argument = _value(command if module != "subprocess" else ["touch", str(marker)])
    payload = _global(module, name) + pickle.MARK + argument + pickle.TUPLE + pickle.REDUCE
    path = _write(tmp_path, _legacy_file(_state_dict([("weight", payload)]), {}))

    with pytest.raises(ModelError) as caught:
        read_state_dict(path)

    assert str(caught.value) == (f"refusing to load {path}: it references the global "
                                 f"{module}.{name}, which is not allowed in a weights file")
    assert caught.value.exit_code == EXIT_MODEL
    assert not marker.exists()


def test_refuses_a_disallowed_global_in_the_header_or_as_a_storage_type(tmp_path):
    storage_global = _global("builtins", "exec")
    state = _state_dict([("w", _tensor("1", "FloatStorage", 1, 0, (1,), (1,), storage_global))])
    hostile_storage = _write(tmp_path, _legacy_file(state, {"1": np.zeros(1, np.float32)}), "a.pth")
    hostile_header = _write(tmp_path, pickle.PROTO + b"\x02" + _global("os", "getcwd")
                            + pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.STOP, "b.pth")

    for path, name in ((hostile_storage, "builtins.exec"), (hostile_header, "os.getcwd")):
        with pytest.raises(ModelError, match=f"references the global {name}, which is not allowed"):
            read_state_dict(path)


def test_truncated_file_is_a_model_error(tmp_path, lite0_pth):
    content = lite0_pth.read_bytes()
    in_storages = _write(tmp_path, content[: len(content) // 2], "half.pth")
    in_pickle = _write(tmp_path, content[:20_000], "head.pth")

    message = r"half\.pth is truncated or corrupt \(storage \d+\)"
    with pytest.raises(ModelError, match=message) as caught:
        read_state_dict(in_storages)
    assert caught.value.exit_code == EXIT_MODEL
    with pytest.raises(ModelError, match=r"head\.pth is corrupt or not a legacy .*truncated"):
        read_state_dict(in_pickle)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", NOT_LEGACY),
        (bytes(range(256)) * 4, NOT_LEGACY),
        (pickle.dumps(12345, protocol=2) * 3, NOT_LEGACY),
        (b"PK\x03\x04" + bytes(100), "is a zip-format torch file; expected the legacy"),
    ],
    ids=["empty", "garbage", "wrong-magic", "zip-format"],
)
def test_files_that_are_not_legacy_state_dicts_are_model_errors(tmp_path, content, message):
    path = _write(tmp_path, content)
    with pytest.raises(ModelError, match=message) as caught:
        read_state_dict(path)
    assert caught.value.exit_code == EXIT_MODEL


@pytest.mark.parametrize(
    "offset, shape, stride",
    [(2, (3,), (1,)), (0, (2, 2), (1, 3)), (0, (10**9,), (0,))],
    ids=["past-the-end", "stride-past-the-end", "zero-stride-expansion"],
)
def test_tensor_reaching_outside_its_storage_is_refused(tmp_path, offset, shape, stride):
    state = _state_dict([("w", _tensor("1", "FloatStorage", 4, offset, shape, stride))])
    path = _write(tmp_path, _legacy_file(state, {"1": np.zeros(4, np.float32)}))
    with pytest.raises(ModelError, match="tensor 'w' lies outside its storage"):
        read_state_dict(path)


def test_pickle_state_cannot_overwrite_tensor_fields(tmp_path):
    """BUILD on a tensor stand-in would replace its storage; the stand-ins have no __dict__."""
    tensor = _tensor("1", "FloatStorage", 1, 0, (1,), (1,))
    state = _state_dict([("w", tensor + _value({"storage": "evil"}) + pickle.BUILD)])
    path = _write(tmp_path, _legacy_file(state, {"1": np.zeros(1, np.float32)}))
    with pytest.raises(ModelError, match="is corrupt or not a legacy"):
        read_state_dict(path)


def test_missing_file_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match=r"cannot read weights file .*absent\.pth"):
        read_state_dict(tmp_path / "absent.pth")
