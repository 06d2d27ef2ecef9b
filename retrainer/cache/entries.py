"""The cache entries of one extractor: reading and writing its vectors under --bottleneck_dir.

One `.npy` entry per image, at `layout.entry_path`, keyed by the SHA-256 of the file's bytes. The
entries of one batch are hard links to one pack file holding their vectors (`_packs`: one file
created per batch, not per image); a lone entry, or one in a remote cache, is a plain float32 [D]
`.npy`. Loading many entries (`load_many`) opens each pack once: its entries share an inode. Files
are written under a temp name and renamed or linked into place: a run killed at any moment leaves
only whole entries, and runs sharing a cache do not collide. Unreadable entries are reported as
missing (with a warning), so they are computed again.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, TypeVar

import numpy as np

from retrainer.cache._packs import PackReader, load_npy, pack_bytes, pack_table
from retrainer.cache.layout import entry_name, entry_path, extractor_folder
from retrainer.io.atomic import making_folder, write_bytes_atomically, write_linked_atomically
from retrainer.io.storage import AnyPath, is_url, open_for_reading

if TYPE_CHECKING:  # only its fields are read: loading cached vectors needs no TensorFlow
    from retrainer.extractors import ExtractorSpec

log = logging.getLogger(__name__)
_Item = TypeVar("_Item")

IO_THREADS = 8  # stats and pack reads in flight when loading many entries


@dataclasses.dataclass(frozen=True)
class BottleneckCache:
    """The cache namespace of one extractor (see the module docstring for the layout).

    `namespace` (a sub-folder, `layout.distorted_subfolder`) separates vectors of transformed
    images from the plain ones; keys are then `<digest>` plus whatever the caller appends.
    """

    root: AnyPath  # a local folder or a URL (retrainer.io.storage)
    spec: ExtractorSpec
    namespace: str = ""
    _reader: PackReader = dataclasses.field(default_factory=PackReader, compare=False,
                                            repr=False)

    @property
    def directory(self) -> AnyPath:
        folder = extractor_folder(self.root, self.spec)
        return folder / self.namespace if self.namespace else folder

    def path(self, digest: str) -> AnyPath:
        return entry_path(self.directory, digest)

    def load(self, digest: str) -> Optional[np.ndarray]:
        """The cached float32 [D] vector; None if absent or unusable (warned, then recomputed)."""
        path = self.path(digest)
        try:
            with open_for_reading(path) as stream:
                vector = self._reader.read(stream, digest)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as error:
            log.warning("Cached bottleneck %s is unreadable (%s); recomputing it.", path, error)
            return None
        return vector if self._usable(vector, path) else None

    def load_many(self, digests: Sequence[str], vectors: np.ndarray, found: np.ndarray) -> None:
        """Fill in the cached vectors of many entries, each pack file opened and read once.

        Entries of one pack are hard links to one file, so a stat of each entry groups them by
        (device, inode) and each group costs one open and one read: about N x 5 KB of I/O for N
        vectors written together, and a file per pack (32 vectors), not per vector. A remote
        cache is read entry by entry.

        Args:
            digests: the entries' keys, one per row of `vectors`; "" (an unreadable file) and
                rows already `found` are skipped.
            vectors: float32 [N, D], filled in place where found.
            found: bool [N], set where a usable vector was filled in.
        """
        wanted = [row for row, digest in enumerate(digests) if digest and not found[row]]
        if is_url(self.directory):
            for row in wanted:
                vector = self.load(digests[row])
                if vector is not None:
                    vectors[row], found[row] = vector, True
            return
        folder = os.fspath(self.directory)

        def identities(rows: list[int]) -> list[tuple[int, tuple[int, int]]]:
            found_here = []
            for row in rows:
                try:
                    status = os.stat(os.path.join(folder, entry_name(digests[row])))
                except FileNotFoundError:
                    continue
                except OSError as error:
                    log.warning("Cached bottleneck %s is unreadable (%s); recomputing it.",
                                self.path(digests[row]), error)
                    continue
                found_here.append((row, (status.st_dev, status.st_ino)))
            return found_here

        def load(groups: list[list[int]]) -> None:
            for rows in groups:
                self._load_pack([digests[row] for row in rows], rows, vectors, found)

        # Stats and pack reads wait on the disk when its pages are not cached (a first run on
        # a million images): several threads keep several requests in flight.
        packs: dict[tuple[int, int], list[int]] = {}
        with ThreadPoolExecutor(IO_THREADS, thread_name_prefix="cache-read") as pool:
            for part in pool.map(identities, _parts(wanted, 4096)):
                for row, identity in part:
                    packs.setdefault(identity, []).append(row)
            list(pool.map(load, _parts(list(packs.values()), 64)))

    def _load_pack(self, digests: list[str], positions: list[int], vectors: np.ndarray,
                   found: np.ndarray) -> None:
        """Fill `vectors`/`found` at `positions` from one file, linked under every digest."""
        path = self.path(digests[0])
        try:
            with open_for_reading(path) as stream:
                array = load_npy(stream.read())
        except (OSError, ValueError, EOFError) as error:
            for digest in digests:  # each entry named: each is recomputed
                log.warning("Cached bottleneck %s is unreadable (%s); recomputing it.",
                            self.path(digest), error)
            return
        table = pack_table(array)
        if table is None:  # a plain entry: one vector under every name
            for digest, position in zip(digests, positions):
                if self._usable(array, self.path(digest)):
                    vectors[position], found[position] = array, True
            return
        # Checked once per pack: 70,000 per-vector checks and paths took about a second.
        rows, block = table
        usable = (np.isfinite(block).all(axis=1) if block.shape[1:] == (self.spec.vector_size,)
                  else np.zeros(len(block), bool))
        taken, source = [], []
        for digest, position in zip(digests, positions):
            row = rows.get(digest)
            if row is None:
                log.warning("Cached bottleneck %s is unreadable (its pack of %d entries has "
                            "none for it); recomputing it.", self.path(digest), len(rows))
            elif usable[row] or self._usable(block[row], self.path(digest)):  # warns
                taken.append(position)
                source.append(row)
        vectors[taken] = block[source]
        found[taken] = True

    def _usable(self, vector: np.ndarray, path: AnyPath) -> bool:
        """A finite float32 [D] vector; else warned (it is then recomputed)."""
        expected = (self.spec.vector_size,)
        if vector.dtype != np.float32 or vector.shape != expected or not np.isfinite(vector).all():
            log.warning(
                "Cached bottleneck %s is not a finite float32 %s vector (found %s %s); "
                "recomputing it.",
                path, expected, vector.dtype, vector.shape,
            )
            return False
        return True

    def store(self, digest: str, vector: np.ndarray) -> None:
        """Write one entry atomically (temp file in the same folder, then rename over)."""
        path = self.path(digest)
        vector = np.asarray(vector, np.float32)
        data = _npy_header(vector.shape) + vector.tobytes()  # what np.save writes, made cheaper
        making_folder(path, lambda: write_bytes_atomically(path, data))

    def store_all(self, entries: Sequence[tuple[str, np.ndarray]]) -> None:
        """Write entries together: in a local folder, one pack linked under each entry's name."""
        linked = 0
        if len(entries) > 1 and not is_url(self.directory):
            linked = write_linked_atomically([Path(self.path(key)) for key, _ in entries],
                                             pack_bytes(entries))
        for key, vector in entries[linked:]:  # remote, alone, or no hard links here
            self.store(key, vector)


def _parts(items: list[_Item], size: int) -> list[list[_Item]]:
    """`items` in consecutive parts of `size` (one task of a thread pool each)."""
    return [items[start:start + size] for start in range(0, len(items), size)]


@functools.lru_cache(maxsize=8)
def _npy_header(shape: tuple[int, ...]) -> bytes:
    """The `.npy` header np.save writes for a float32 array of `shape`."""
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(shape, np.float32), allow_pickle=False)
    return buffer.getvalue()[: -4 * int(np.prod(shape))]
