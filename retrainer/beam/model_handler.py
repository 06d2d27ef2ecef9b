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


@dataclasses.dataclass
class LoadedExtractor:
    """A worker's model: the extractor (kept alive) and its traced uint8 -> vector function."""

    extractor: Any
    features: Callable[[Any], Any]


class BottleneckModelHandler(ModelHandler[np.ndarray, PredictionResult, LoadedExtractor]):
    """uint8 [H, W, 3] pixels -> float32 [D] bottleneck vectors, in batches.

    Args:
        tfhub_module: what `retrain --tfhub_module` takes (built-in name, hub handle, local path).
        image_size: `retrain --image_size`, or None for the module's own.
        max_batch_size: images per extractor call (the batch split across local devices).
    """

    def __init__(self, tfhub_module: str, image_size: Optional[int], max_batch_size: int) -> None:
        # Fixed-size batches, as the single-machine path makes: BatchElements' adaptive sizes start
        # at 1 and stay small on short bundles, which costs throughput for no gain.
        super().__init__(min_batch_size=max_batch_size, max_batch_size=max_batch_size)
        self.tfhub_module = tfhub_module
        self.image_size = image_size

    def load_model(self) -> LoadedExtractor:
        from retrainer.engines.float32 import feature_function
        from retrainer.extractors import create_extractor

        extractor = create_extractor(self.tfhub_module, self.image_size)
        return LoadedExtractor(extractor, feature_function(extractor))

    def run_inference(
        self,
        batch: Sequence[np.ndarray],
        model: LoadedExtractor,
        inference_args: Optional[dict[str, Any]] = None,
    ) -> Iterable[PredictionResult]:
        vectors = model.features(np.stack(batch)).numpy()
        return [PredictionResult(pixels, vector) for pixels, vector in zip(batch, vectors)]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(pixels.nbytes for pixels in batch)

    def get_metrics_namespace(self) -> str:
        return "retrain_extract"
