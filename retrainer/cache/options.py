"""How the bottleneck stage computes vectors: `RetrainConfig.extraction`, checked when built.

Free of TensorFlow, so that the config (and `retrain --help`) can build it; whether the named
devices exist is checked once TensorFlow has loaded (`retrainer.engines.multi_device`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from retrainer.engines import AUTO, PRECISIONS, parse_devices
from retrainer.errors import require
from retrainer.io.storage import AnyPath

EXTRACTOR_PRECISIONS = (AUTO, *PRECISIONS)


@dataclasses.dataclass(frozen=True)
class ExtractionOptions:
    """The extractor, the precision and devices it runs at, and the cache it fills.

    Attributes:
        extractor: --tfhub_module: a built-in name, a TF Hub handle or a module path.
        image_size: input size for extractors that accept several; None = the module's own.
        precision: --extractor_precision, one of EXTRACTOR_PRECISIONS.
        devices: --extraction_devices as TensorFlow device names; () = auto.
        bottleneck_dir: the cache root.
        show_progress: a progress bar on stderr (when it is a terminal).
        trust_model: --trust_model: load a module file without `retrainer.security` checks.

    Raises:
        UsageError: on construction, naming the flag.
    """

    extractor: str
    image_size: Optional[int]
    precision: str
    devices: tuple[str, ...]
    bottleneck_dir: AnyPath
    show_progress: bool = True
    trust_model: bool = False  # load the extractor's module without checking its ops

    def __post_init__(self) -> None:
        require("image_size", self.image_size, self.image_size is None or self.image_size >= 1,
                "a positive size")
        require("extractor_precision", self.precision, self.precision in EXTRACTOR_PRECISIONS,
                f"one of {list(EXTRACTOR_PRECISIONS)}")

    @classmethod
    def from_flags(cls, tfhub_module: str, image_size: Optional[int], extractor_precision: str,
                   extraction_devices: str, bottleneck_dir: AnyPath,
                   show_progress: bool = True, trust_model: bool = False) -> "ExtractionOptions":
        """From retrain's flag values (`extraction_devices` as typed: "auto", "GPU:0,GPU:1")."""
        return cls(tfhub_module, image_size, extractor_precision, parse_devices(extraction_devices),
                   bottleneck_dir, show_progress, trust_model)
