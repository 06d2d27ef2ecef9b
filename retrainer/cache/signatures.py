"""The audit's perceptual signatures, cached beside the vectors by file digest.

`<bottleneck_dir>/audit-signatures-v2/<H>x<W>/<aa>.bin` (`retrainer.cache.layout`): one shard per
first two hex digits of the files' SHA-256, each a flat array of fixed-size records (raw digest,
64-bit perceptual hash, 32x32 grey thumbnail), rewritten atomically when entries are added. The
folder names the extractor's input size because the thumbnail comes from the same decode as the
extractor's pixels (a JPEG is decoded at the DCT scale that size allows), so it is the same for
every run with that size. Written by the bottleneck stage, read by the audit.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import defaultdict
from typing import Sequence

import numpy as np

from retrainer.cache.layout import audit_signatures_folder
from retrainer.data.signatures import THUMBNAIL, Signatures
from retrainer.io.atomic import making_folder, write_bytes_atomically
from retrainer.io.storage import is_url, open_for_reading

log = logging.getLogger(__name__)

RECORD = np.dtype([("digest", "S32"), ("hash", "<u8"),
                   ("thumbnail", "u1", (THUMBNAIL, THUMBNAIL))])


class SignatureCache:
    """Signatures keyed by hex SHA-256 of the image file, for one extractor input size."""

    def __init__(self, bottleneck_dir: os.PathLike[str] | str,
                 input_size: tuple[int, int]) -> None:
        self.directory = audit_signatures_folder(bottleneck_dir, input_size)
        # where a million thumbnails go on disk rather than in memory (`Signatures.empty`)
        self.scratch = None if is_url(bottleneck_dir) else os.fspath(bottleneck_dir)

    def lookup(self, digests: Sequence[str]) -> tuple[Signatures, np.ndarray]:
        """(signatures of `digests` (zeros where absent), bool [N] found)."""
        signatures = Signatures.empty(len(digests), self.scratch)
        found = np.zeros(len(digests), bool)
        for shard, positions in _by_shard(digests).items():
            records = self._read(shard)
            if not len(records):
                continue
            # Joined by binary search on the raw digests (a dict per shard and a conversion per
            # digest took seconds at a million images).
            keys = records["digest"]
            order = np.argsort(keys, kind="stable")
            asked = np.frombuffer(bytes.fromhex("".join(digests[position] for position in
                                                        positions)), "S32")
            rows = order[np.minimum(np.searchsorted(keys[order], asked), len(order) - 1)]
            hit = keys[rows] == asked
            wanted, taken = np.array(positions, np.int64)[hit], rows[hit]
            signatures.thumbnails[wanted] = records["thumbnail"][taken]
            signatures.hashes[wanted] = records["hash"][taken]
            found[wanted] = True
        return signatures, found

    def store(self, digests: Sequence[str], signatures: Signatures) -> None:
        """Add entries (each shard rewritten once, atomically; two runs at once may drop an
        entry, which is then recomputed)."""
        for shard, positions in _by_shard(digests).items():
            fresh = np.zeros(len(positions), RECORD)
            fresh["digest"] = [bytes.fromhex(digests[position]) for position in positions]
            fresh["hash"] = signatures.hashes[positions]
            fresh["thumbnail"] = signatures.thumbnails[positions]
            old = self._read(shard)
            merged = np.concatenate([old[~np.isin(old["digest"], fresh["digest"])], fresh])
            path = self.directory / f"{shard}.bin"
            making_folder(path, functools.partial(write_bytes_atomically, path, merged.tobytes()))

    def _read(self, shard: str) -> np.ndarray:
        path = self.directory / f"{shard}.bin"
        try:
            with open_for_reading(path) as stream:
                data = stream.read()
        except FileNotFoundError:
            return np.zeros(0, RECORD)
        except OSError as error:
            log.warning("Audit signature cache %s is unreadable (%s); recomputing it.", path, error)
            return np.zeros(0, RECORD)
        if len(data) % RECORD.itemsize:
            log.warning("Audit signature cache %s is truncated; recomputing it.", path)
            return np.zeros(0, RECORD)
        return np.frombuffer(data, RECORD)


def _by_shard(digests: Sequence[str]) -> dict[str, list[int]]:
    shards: dict[str, list[int]] = defaultdict(list)
    for position, digest in enumerate(digests):
        if digest:
            shards[digest[:2]].append(position)
    return shards
