"""The extractor and its engine, with the checks that need TensorFlow: a --tfhub_module folder's
model check (before anything is written), the weights' load, and whether fine-tuning can train
the extractor. Runs once `retrainer.pipeline` has loaded TensorFlow, after the preflight."""

from __future__ import annotations

from retrainer.cache.options import ExtractionOptions
from retrainer.config import RetrainConfig
from retrainer.engines import Engine
from retrainer.engines.factory import create_engine
from retrainer.extractors import FeatureExtractor, create_extractor
from retrainer.extractors.tfhub import check_extractor_module
from retrainer.pipeline.preflight import check_outputs, names_module_folder
from retrainer.pipeline.timer import StageTimer


def prepare_extractor(config: RetrainConfig, timer: StageTimer
                      ) -> tuple[FeatureExtractor, Engine]:
    """The extractor and its engine (timed as "extractor"), checked for fine-tuning if asked.

    Raises:
        UsageError: an unknown extractor, a precision or device this machine cannot run, an
            extractor --do_fine_tuning cannot train; an output path the preflight left to check.
        ModelError: the extractor cannot be loaded.
        UntrustedModelError: the --tfhub_module folder failed the model check.
    """
    if names_module_folder(config.tfhub_module):
        check_extractor_module(config.tfhub_module, config.trust_model)  # before any write
        check_outputs(config)
    with timer("extractor"):
        extractor, engine = extractor_and_engine(config.extraction)
    if config.training.do_fine_tuning:
        extractor.fine_tunable_variables(config.training.fine_tune_blocks)  # raises if it cannot
    return extractor, engine


def extractor_and_engine(options: ExtractionOptions) -> tuple[FeatureExtractor, Engine]:
    """`--tfhub_module` at `--image_size`, run by the engine of `--extractor_precision`."""
    extractor = create_extractor(options.extractor, options.image_size, options.trust_model)
    return extractor, create_engine(extractor, options.precision, options.devices)
