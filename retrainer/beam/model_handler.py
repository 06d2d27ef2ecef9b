"""RunInference handler: retrainer's own engine, called exactly as the single-machine path calls it.

Beam's stock `TFModelHandler*` load through Keras, which rejects plain SavedModels under Keras 3;
this handler loads any extractor `retrain` accepts (`create_extractor`) and runs it through the
engine `retrain` would use at the same precision (`create_engine`), so Beam and `retrain` compute
the same vectors into the same cache namespace. Each worker process loads the engine once
(RunInference keeps it in a shared per-process handle).
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from retrainer.engines import Engine
from retrainer.engines.factory import create_engine
from retrainer.extractors import create_extractor


class BottleneckModelHandler(ModelHandler[np.ndarray, PredictionResult, Engine]):
    """uint8 [H, W, 3] pixels -> float32 [D] bottleneck vectors, in batches.

    Args:
        tfhub_module: what `retrain --tfhub_module` takes (built-in name, hub handle, local path).
        image_size: `retrain --image_size`, or None for the module's own.
        max_batch_size: images per engine call (the batch split across local devices).
        precision: a resolved precision (float32, bfloat16, int8), not auto: every worker must
            compute the vectors of the namespace the launching machine chose.
        trust_model: load the module without checking it (each worker checks it otherwise).
    """

    def __init__(self, tfhub_module: str, image_size: Optional[int], max_batch_size: int,
                 precision: str, trust_model: bool = False) -> None:
        # Fixed-size batches, as the single-machine path makes: BatchElements' adaptive sizes start
        # at 1 and stay small on short bundles, which costs throughput for no gain.
        super().__init__(min_batch_size=max_batch_size, max_batch_size=max_batch_size)
        self.tfhub_module = tfhub_module
        self.image_size = image_size
        self.precision = precision
        self.trust_model = trust_model

    def load_model(self) -> Engine:
        extractor = create_extractor(self.tfhub_module, self.image_size, self.trust_model)
        return create_engine(extractor, self.precision)

    def run_inference(
        self,
        batch: Sequence[np.ndarray],
        model: Engine,
        inference_args: Optional[dict[str, Any]] = None,
    ) -> Iterable[PredictionResult]:
        vectors = model(np.stack(batch))
        return [PredictionResult(pixels, vector) for pixels, vector in zip(batch, vectors)]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(pixels.nbytes for pixels in batch)

    def get_metrics_namespace(self) -> str:
        return "retrain_extract"
