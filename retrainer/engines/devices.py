"""`--extraction_devices`: which local devices run the extractor, parsed without TensorFlow.

The config validates the spelling here (so a typo fails before TensorFlow loads); whether the
devices exist is checked against TensorFlow's logical devices by `retrainer.engines.multi_device`.
"""

from __future__ import annotations

import re

from retrainer.errors import UsageError

AUTO_DEVICES = "auto"
_NAME = re.compile(r"^(?:/?(?:device:)?(CPU|GPU):)?(\d+)$", re.IGNORECASE)


def parse_devices(text: str) -> tuple[str, ...]:
    """TensorFlow device names ("/device:GPU:0") from "auto" or "GPU:0,GPU:1" / "0,1" (GPUs).

    Returns:
        () for "auto" (the engine chooses: every local GPU when there are 2 or more).

    Raises:
        UsageError: a name that is not CPU:<n> or GPU:<n>, or a device named twice (exit 2).
    """
    if text.strip().lower() == AUTO_DEVICES:
        return ()
    names = []
    for part in text.split(","):
        match = _NAME.match(part.strip())
        if match is None:
            raise UsageError(f"--extraction_devices must be auto or a comma-separated list such as "
                             f"GPU:0,GPU:1 (or 0,1). Received: {text!r}.")
        names.append(f"/device:{(match.group(1) or 'GPU').upper()}:{int(match.group(2))}")
    if len(set(names)) != len(names):
        raise UsageError(f"--extraction_devices names a device twice. Received: {text!r}.")
    return tuple(names)


def short_name(device: str) -> str:
    """"/device:GPU:0" -> "GPU:0", as users spell it."""
    return device.rpartition("device:")[2]
