"""What an extractor is to the rest of the pipeline (`ExtractorSpec`): its cache namespace, input
and vector sizes. Free of TensorFlow, so a run can name an extractor's cache and exports before
(or without) building the extractor; `retrainer.extractors` re-exports it.
"""

from __future__ import annotations

import dataclasses
import re

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclasses.dataclass(frozen=True)
class ExtractorSpec:
    """What the pipeline needs to know about an extractor, and nothing else.

    Attributes:
        name: what the user asked for (registry name, hub handle or path), for messages.
        id: stable and filesystem-safe; changes whenever the vectors would change. Used as the
            bottleneck cache namespace, so two extractors never share cached vectors.
        input_size: (height, width) in pixels that `__call__` expects.
        vector_size: D, the length of one bottleneck vector.
    """

    name: str
    id: str
    input_size: tuple[int, int]
    vector_size: int

    def __post_init__(self) -> None:
        if not _SAFE_ID.match(self.id) or len(self.id) > 200:
            raise ValueError(f"extractor id must be filesystem-safe. Received: id={self.id!r}")
        height, width = self.input_size
        if height <= 0 or width <= 0 or self.vector_size <= 0:
            raise ValueError(f"input_size and vector_size must be positive. Received: {self}")
