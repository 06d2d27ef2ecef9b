"""RunInference handler: retrainer's own extractor, called exactly as the single-machine path does.

Beam's stock `TFModelHandler*` load through Keras, which rejects plain SavedModels under Keras 3;
this handler loads any extractor `retrain` accepts (`create_extractor`) and runs it through
`bottlenecks.feature_function`, so Beam and `retrain` compute the same vectors. Each worker
process loads the model once (RunInference keeps it in a shared per-process handle).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from retrainer.beam.transforms import ImageBatch


@dataclasses.dataclass
class LoadedExtractor:
    """A worker's model: the extractor (kept alive) and its traced uint8 -> vector function."""

    extractor: Any
    features: Callable[[Any], Any]


class BottleneckModelHandler(ModelHandler[ImageBatch, PredictionResult, LoadedExtractor]):
    """A batch of decoded images -> float32 [B, D] bottleneck vectors, one extractor call each.

    The pipeline batches the images itself (`transforms.ImageBatch`) and uses this handler
    `.with_no_batching()`, each element a list of one ImageBatch: RunInference's own batching
    emits a bundle's last batch from `finish_bundle`, which Beam's DaskRunner drops.

    Args:
        tfhub_module: what `retrain --tfhub_module` takes (built-in name, hub handle, local path).
        image_size: `retrain --image_size`, or None for the module's own.
    """

    def __init__(self, tfhub_module: str, image_size: Optional[int]) -> None:
        super().__init__()
        self.tfhub_module = tfhub_module
        self.image_size = image_size

    def load_model(self) -> LoadedExtractor:
        from retrainer.bottlenecks import feature_function
        from retrainer.extractors import create_extractor

        extractor = create_extractor(self.tfhub_module, self.image_size)
        return LoadedExtractor(extractor, feature_function(extractor))

    def run_inference(
        self,
        batch: Sequence[ImageBatch],
        model: LoadedExtractor,
        inference_args: Optional[dict[str, Any]] = None,
    ) -> Iterable[PredictionResult]:
        # The pixels stay behind: the next step needs the digests and counts only.
        return [PredictionResult(dataclasses.replace(images, pixels=images.pixels[:0]),
                                 self._vectors(images, model)) for images in batch]

    @staticmethod
    def _vectors(images: ImageBatch, model: LoadedExtractor) -> np.ndarray:
        if not len(images.digests):  # every file cached or unreadable: no model call
            return np.zeros((0, model.extractor.spec.vector_size), np.float32)
        return model.features(images.pixels).numpy()

    def get_num_bytes(self, batch: Sequence[ImageBatch]) -> int:
        return sum(images.pixels.nbytes for images in batch)

    def get_metrics_namespace(self) -> str:
        return "retrain_extract"
