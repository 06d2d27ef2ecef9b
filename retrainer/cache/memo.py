"""Results kept by what they are made from, so a rerun that would make the same bytes reads them.

The report's pictures, its heat maps and small records each live under a local --bottleneck_dir in
a file named by a hash of their inputs (`key`): retrainer's own code, library versions and the
data they show (`Memo`). Outputs written elsewhere (the frozen graph, the checkpoint) are kept
where they are when a record says the same inputs wrote exactly those bytes (`KeptOutputs`).
Writes are atomic; a value that cannot be read (missing, partial, foreign) is made again, and one
that cannot be written costs a warning and the next run's time, never the run. Per-machine files
that are not made again cheaply (graph and checkpoint templates, the heat maps' map model) are
sealed (`Memo.write_sealed`): a kind line, the SHA-256 of what follows, a JSON header and the body,
so a truncated, altered or foreign file is never read as one.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from retrainer.io.atomic import making_folder, write_bytes_atomically
from retrainer.io.host import code_digest, warn_not_kept
from retrainer.io.storage import AnyPath, is_url, read_bytes


def memo_key(*inputs: Any) -> str:
    """SHA-256 of retrainer's code and the repr of `inputs` (plain values: str, numbers,
    tuples, lists, bytes)."""
    return hashlib.sha256(repr((code_digest(), inputs)).encode()).hexdigest()


def arrays_digest(arrays: Iterable[Any]) -> str:
    """SHA-256 of each array's dtype, shape and bytes, in order (a key's part for weights)."""
    digest = hashlib.sha256()
    for array in arrays:
        value = np.ascontiguousarray(np.asarray(array))
        digest.update(f"{value.dtype.str}{value.shape}".encode())
        digest.update(value.data)
    return digest.hexdigest()


class Memo:
    """One kind of kept result: `path_of(root, key)` is where the value of `key` lives
    (`cache.layout`). Without a local root (None or a URL) nothing is kept."""

    def __init__(self, root: Optional[os.PathLike[str] | str],
                 path_of: Callable[[os.PathLike[str] | str, str], AnyPath]) -> None:
        self.root = None if root is None or is_url(root) else root
        self._path_of = path_of

    def read(self, key: str, usable: Callable[[bytes], bool] = bool) -> Optional[bytes]:
        """The bytes kept under `key` if `usable(data)`, else None."""
        if self.root is None:
            return None
        try:
            data = read_bytes(self._path_of(self.root, key))
        except OSError:
            return None
        return data if usable(data) else None

    def holds(self, key: str) -> bool:
        """Whether a value is kept under `key` (not read: it may still prove unusable)."""
        return self.root is not None and os.path.exists(self._path_of(self.root, key))

    def write(self, key: str, data: bytes) -> None:
        """Keep `data` under `key` (atomically); a failure is a warning (once per process)."""
        if self.root is None:
            return
        path = self._path_of(self.root, key)
        try:
            making_folder(path, lambda: write_bytes_atomically(path, data))
        except OSError as error:
            warn_not_kept(self.root, path, error)

    def read_sealed(self, key: str, kind: str) -> Optional[tuple[dict[str, Any], bytes]]:
        """(header, body) kept under `key` by `write_sealed(key, kind, ...)`; None when absent
        or not exactly what was written (another kind, truncated, any byte changed)."""
        data = self.read(key)
        magic = _magic(kind)
        if data is None or not data.startswith(magic):
            return None
        digest, _, sealed = data[len(magic):].partition(b"\n")
        if hashlib.sha256(sealed).hexdigest().encode() != digest:
            return None
        header, _, body = sealed.partition(b"\n")
        return json.loads(header), body

    def write_sealed(self, key: str, kind: str, header: dict[str, Any], body: bytes) -> None:
        """Keep `body` and its `header` (JSON values) under `key`, sealed as `kind` (the file's
        first line; say its version, e.g. "graph template v2"), atomically; a failure is a
        warning."""
        sealed = json.dumps(header, sort_keys=True).encode() + b"\n" + body
        self.write(key, _magic(kind) + hashlib.sha256(sealed).hexdigest().encode() + b"\n"
                   + sealed)

    def get(self, key: str, make: Callable[[], bytes],
            usable: Callable[[bytes], bool] = bool) -> bytes:
        """The bytes kept under `key`, or `make()`'s, then kept."""
        data = self.read(key, usable)
        if data is None:
            data = make()
            self.write(key, data)
        return data


def _magic(kind: str) -> bytes:
    return f"retrainer {kind}\n".encode()


class KeptOutputs:
    """Output files a rerun need not write again: under `key` (a hash of what they are made
    from) a record holds the SHA-256 of each file those inputs wrote, one line per file."""

    def __init__(self, root: Optional[os.PathLike[str] | str],
                 path_of: Callable[[os.PathLike[str] | str, str], AnyPath]) -> None:
        self._records = Memo(root, path_of)

    def read(self, key: str, paths: Sequence[os.PathLike[str] | str]) -> Optional[list[bytes]]:
        """The bytes of the files at `paths` if they are what `key`'s inputs wrote, else None."""
        if self._records.root is None or any(is_url(path) for path in paths):
            return None
        record = self._records.read(key)
        if record is None:
            return None
        contents = []
        for path in paths:
            try:
                with open(path, "rb") as stream:
                    contents.append(stream.read())
            except OSError:
                return None
        digests = [hashlib.sha256(data).hexdigest().encode() for data in contents]
        return contents if record.split() == digests else None

    def remember(self, key: str, contents: Sequence[bytes]) -> None:
        """Record what `key`'s inputs wrote (a failed write is a warning)."""
        self.remember_digests(key, [hashlib.sha256(data).hexdigest() for data in contents])

    def remember_digests(self, key: str, digests: Sequence[str]) -> None:
        """`remember`, given the files' SHA-256 (hex), for a caller that has them already."""
        self._records.write(key, b"".join(digest.encode() + b"\n" for digest in digests))
