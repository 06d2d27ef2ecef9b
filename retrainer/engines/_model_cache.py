"""On-disk cache of converted engine models (the int8 engine's `.tflite`), so a run loads in
milliseconds what took seconds to convert.

`${XDG_CACHE_HOME:-~/.cache}/retrainer/engines/<extractor id>/<kind>-<key>.tflite`, beside it
`<file>.sha256` (the model's digest, written after it). The key hashes everything that decides the
bytes; the digest catches a truncated or corrupt file, which is then rebuilt with a warning. Both
files are written atomically; a cache that cannot be written only costs the conversion next time.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable, Optional

from retrainer.io.atomic import write_bytes_atomically
from retrainer.io.host import user_cache_dir, warn_not_kept

log = logging.getLogger(__name__)


def engine_cache_dir() -> Path:
    """`${XDG_CACHE_HOME:-~/.cache}/retrainer/engines` (read on each call: tests redirect it)."""
    return user_cache_dir() / "engines"


def model_path(extractor_id: str, kind: str, key_parts: tuple[str, ...]) -> Path:
    """Where the model of `extractor_id` built from `key_parts` (all that decides it) is kept."""
    key = hashlib.sha256("\0".join(key_parts).encode()).hexdigest()[:20]
    return engine_cache_dir() / extractor_id / f"{kind}-{key}.tflite"


def cached_model(path: Path, build: Callable[[], bytes]) -> bytes:
    """The model at `path` if whole, else `build()` (and stored there for the next run)."""
    model = kept_model(path)
    if model is not None:
        return model
    model = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomically(path, model)
        write_bytes_atomically(_digest_path(path), hashlib.sha256(model).hexdigest().encode())
    except OSError as error:
        warn_not_kept(engine_cache_dir(), path, error)
    return model


def kept_model(path: Path) -> Optional[bytes]:
    """The model an earlier run kept at `path`, if whole (its digest matches); else None."""
    try:
        model = path.read_bytes()
        expected = _digest_path(path).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):  # not kept (or no cache folder at all)
        return None
    except (OSError, UnicodeDecodeError) as error:
        log.warning("Cached model %s is unreadable (%s); converting again.", path, error)
        return None
    if hashlib.sha256(model).hexdigest() != expected:
        log.warning("Cached model %s is corrupt or truncated (its digest does not match); "
                    "converting again.", path)
        return None
    return model


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")
