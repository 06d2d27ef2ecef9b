"""retrainer: transfer-learning image retrainer (retrain.py + label_image.py, offline and fast).

The Python API (docs/python.md): `retrainer.retrain(image_dir, **options)` trains and exports a
classifier, `retrainer.load(path)` opens an exported model, `model.predict(images)` classifies.
They live in `retrainer.api`, imported on first use, so `import retrainer` stays instant (no
TensorFlow until a model is trained or loaded).

Layers, lowest first: `errors`; `io` (storage, atomic files); `data` (discovery, split, decoding)
and `formats` (model files); `security` (model checks); `extractors` and `engines` (the network,
at a precision); `cache` (the bottleneck stage and its vectors); `training`, `explain`, `reports`,
`audit`, `classify`, `exports` and `beam`; `config` and `result`; then `pipeline` (the one place
that wires the stages), `api` and `cli` (thin click front-ends; nothing below it imports click).
docs/architecture.md walks through them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retrainer.api import Model, Prediction, load, retrain

__version__ = "0.1.0"
__all__ = ["Model", "Prediction", "__version__", "load", "retrain"]
_API = frozenset({"Model", "Prediction", "load", "retrain"})


def __getattr__(name: str) -> Any:
    """retrainer.retrain, .load, .Model, .Prediction: imported from retrainer.api on first use."""
    if name in _API:
        return getattr(importlib.import_module("retrainer.api"), name)
    raise AttributeError(f"module 'retrainer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
