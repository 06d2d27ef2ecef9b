"""The engine interface: uint8 pixels in, bottleneck vectors out, at one numeric precision.

An extractor (`retrainer.extractors`) says what network computes the vectors; an engine says how
it is run. Engines exist so the bottleneck stage (and later fine-tuning's forward pass) can run the
same weights through TensorFlow in float32 or bfloat16, or through LiteRT in int8, behind one call.
Each engine's `spec.id` names its precision, so each precision has its own bottleneck cache
namespace and vectors of different precisions never mix. The exported graph always holds the
float32 extractor.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Optional, TypeVar

import numpy as np

if TYPE_CHECKING:  # importing extractors loads TensorFlow; this module must stay light
    from retrainer.extractors import ExtractorSpec

Batch = TypeVar("Batch")

FLOAT32, BFLOAT16, INT8, AUTO = "float32", "bfloat16", "int8", "auto"
PRECISIONS = (FLOAT32, BFLOAT16, INT8)
# int8 accuracy measured for these extractors' spec names (README, Performance): `auto` picks int8.
INT8_MEASURED = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


class Engine:
    """Base class: subclasses set the attributes and implement `__call__`.

    Attributes:
        precision: one of PRECISIONS.
        spec: the extractor's spec, its id extended by the precision (except for float32, whose
            vectors are the extractor's own).
        batch_size: images per call that the engine runs fastest at (callers may pass any).
        devices: TensorFlow names of the devices it runs on, e.g. ("/device:GPU:0",).
    """

    precision: str
    spec: "ExtractorSpec"
    batch_size: int
    devices: tuple[str, ...]
    _model_path: Optional[Path] = None

    @property
    def model_path(self) -> Optional[Path]:
        """The kept `.tflite` it runs (int8), or None."""
        return self._model_path

    def kept_model_path(self) -> Optional[Path]:
        """The kept model a next run can run without TensorFlow (its extraction-specs record):
        `model_path`, unless the engine knows one before its first call (`Int8Engine`)."""
        return self.model_path

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """Bottleneck vectors of a batch.

        Args:
            pixels: uint8 [N, H, W, 3] RGB, (H, W) == spec.input_size.

        Returns:
            float32 [N, D], D == spec.vector_size.
        """
        raise NotImplementedError

    def map(self, batches: Iterable[Batch], pixels: Callable[[Batch], np.ndarray]
            ) -> Iterator[tuple[Batch, np.ndarray]]:
        """(batch, float32 [N, D] vectors of `pixels(batch)`) for each of `batches`, in order;
        a batch of no pixels gets no vectors and never calls the model. Engines that run
        several batches at once (int8: one interpreter per CPU) override it.
        """
        for batch in batches:
            images = pixels(batch)
            yield batch, (self(images) if len(images)
                          else np.zeros((0, self.spec.vector_size), np.float32))


def precision_spec(spec: "ExtractorSpec", suffix: str) -> "ExtractorSpec":
    """`spec` with `-<suffix>` appended to its id: a separate cache namespace."""
    return dataclasses.replace(spec, id=f"{spec.id}-{suffix}")
