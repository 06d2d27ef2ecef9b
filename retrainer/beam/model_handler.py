"""RunInference handler: retrainer's own engine, called exactly as the single-machine path calls it.

Beam's stock `TFModelHandler*` load through Keras, which rejects plain SavedModels under Keras 3;
this handler loads any extractor `retrain` accepts (`create_extractor`) and runs it through the
engine `retrain` would use at the same precision (`create_engine`), so Beam and `retrain` compute
the same vectors into the same cache namespace. Each worker process loads the engine once
(RunInference keeps it in a shared per-process handle).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from retrainer.beam.transforms import ImageBatch
from retrainer.engines import Engine


class BottleneckModelHandler(ModelHandler[ImageBatch, PredictionResult, Engine]):
    """A batch of decoded images -> float32 [B, D] bottleneck vectors, one engine call each.

    The pipeline batches the images itself (`transforms.ImageBatch`) and uses this handler
    `.with_no_batching()`, each element a list of one ImageBatch: RunInference's own batching
    emits a bundle's last batch from `finish_bundle`, which Beam's DaskRunner drops.

    Args:
        tfhub_module: what `retrain --tfhub_module` takes (built-in name, hub handle, local path).
        image_size: `retrain --image_size`, or None for the module's own.
        precision: a resolved precision (float32, bfloat16, int8), not auto: every worker must
            compute the vectors of the namespace the launching machine chose.
    """

    def __init__(self, tfhub_module: str, image_size: Optional[int], precision: str) -> None:
        super().__init__()
        self.tfhub_module = tfhub_module
        self.image_size = image_size
        self.precision = precision

    def load_model(self) -> Engine:
        from retrainer.engines import create_engine
        from retrainer.extractors import create_extractor

        return create_engine(create_extractor(self.tfhub_module, self.image_size), self.precision)

    def run_inference(
        self,
        batch: Sequence[ImageBatch],
        model: Engine,
        inference_args: Optional[dict[str, Any]] = None,
    ) -> Iterable[PredictionResult]:
        # The pixels stay behind: the next step needs the digests and counts only.
        return [PredictionResult(dataclasses.replace(images, pixels=images.pixels[:0]),
                                 _vectors(images, model)) for images in batch]

    def get_num_bytes(self, batch: Sequence[ImageBatch]) -> int:
        return sum(images.pixels.nbytes for images in batch)

    def get_metrics_namespace(self) -> str:
        return "retrain_extract"


def _vectors(images: ImageBatch, engine: Engine) -> np.ndarray:
    if not images.digests:  # every file cached or unreadable: no engine call
        return np.zeros((0, engine.spec.vector_size), np.float32)
    return engine(images.pixels)
