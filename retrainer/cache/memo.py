"""Results kept by what they are made from, so a rerun that would make the same bytes reads them.

The report's pictures, its heat maps and the frozen graph's record each live under a local
--bottleneck_dir in a file named by a hash of their inputs (`key`): retrainer's own code,
library versions and the data they show. Writes are atomic; a value that cannot be read (missing,
partial, foreign) is made again, and one that cannot be written costs a warning and the next
run's time, never the run.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any, Callable, Optional

from retrainer.io.atomic import making_folder, write_bytes_atomically
from retrainer.io.host import code_digest
from retrainer.io.storage import AnyPath, is_url, read_bytes

log = logging.getLogger(__name__)


def memo_key(*inputs: Any) -> str:
    """SHA-256 of retrainer's code and the repr of `inputs` (plain values: str, numbers,
    tuples, lists, bytes)."""
    return hashlib.sha256(repr((code_digest(), inputs)).encode()).hexdigest()


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

    def write(self, key: str, data: bytes) -> None:
        """Keep `data` under `key` (atomically); a failure is a warning."""
        if self.root is None:
            return
        path = self._path_of(self.root, key)
        try:
            making_folder(path, lambda: write_bytes_atomically(path, data))
        except OSError as error:
            log.warning("Could not keep %s for the next run (it will be made again): %s",
                        path, error)

    def get(self, key: str, make: Callable[[], bytes],
            usable: Callable[[bytes], bool] = bool) -> bytes:
        """The bytes kept under `key`, or `make()`'s, then kept."""
        data = self.read(key, usable)
        if data is None:
            data = make()
            self.write(key, data)
        return data
