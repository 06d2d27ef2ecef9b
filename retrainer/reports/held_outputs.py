"""Files that training writes before the quality gates are known, held back until they pass.

With a gate asked for, intermediate graphs and the checkpoint are written into a hidden staging
folder beside their destination folder (`.NAME.<hex>.tmp`, same file system), moved into place
when the gates pass and deleted when one fails, so a failing run leaves every earlier file as it
was. A staging folder left by a killed run is deleted by a later run once it is an hour old.
"""

from __future__ import annotations

import logging
import secrets

from retrainer.io.atomic import remove_stale_temporaries
from retrainer.io.storage import AnyPath, move, remove_tree

log = logging.getLogger(__name__)


class HeldOutputs:
    """Staging folders for destination folders; pass-through when `active` is False."""

    def __init__(self, active: bool) -> None:
        self.active = active
        self._staged: list[tuple[AnyPath, AnyPath]] = []  # (staging folder, destination folder)

    def folder(self, destination: AnyPath) -> AnyPath:
        """Where to write files meant for `destination` (the folder itself when not active)."""
        if not self.active:
            return destination
        for leftover in remove_stale_temporaries(destination):
            log.info("Removed %s, left by an interrupted run.", leftover)
        staging = destination.parent / f".{destination.name}.{secrets.token_hex(8)}.tmp"
        staging.mkdir(parents=True)
        self._staged.append((staging, destination))
        return staging

    def release(self) -> None:
        """Move every held file into its destination folder (replacing files of the same name)."""
        for staging, destination in self._staged:
            entries: list[AnyPath] = sorted(staging.iterdir(), key=str)
            if entries:  # an unused staging folder must not create its destination
                destination.mkdir(parents=True, exist_ok=True)
            for entry in entries:
                move(entry, destination / entry.name)
            remove_tree(staging)
        self._staged.clear()

    def discard(self) -> None:
        """Delete every held file: the destinations keep what they had."""
        for staging, _ in self._staged:
            remove_tree(staging)
        self._staged.clear()
