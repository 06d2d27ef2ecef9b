"""The retrain pipeline: the one place that wires the stages, each entered once.

    preflight (output paths, discovery and split, calibration supply) -> file index (which
    files' digests are still known) -> extractor and engine -> bottlenecks -> audit ->
    training -> evaluation -> exports -> the result document -> reports (and the quality
    gates' verdict)

`import tensorflow` alone takes seconds, so `run` loads the stages that need it
(`pipeline.stages`, with TensorFlow) on a background thread while the preflight and the file
index, which do not, run; the timer's "import" is only the part of that load they could not
hide. This module itself imports no TensorFlow.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional

from retrainer.cache.file_index import FileIndex
from retrainer.config import RetrainConfig
from retrainer.pipeline._background import BackgroundImport
from retrainer.pipeline.preflight import preflight
from retrainer.pipeline.timer import StageTimer
from retrainer.result import RetrainResult

if TYPE_CHECKING:  # loaded by name on a background thread; listed so the import graph shows it
    from retrainer.pipeline import stages  # noqa: F401

STAGES_MODULE = "retrainer.pipeline.stages"


def run(config: RetrainConfig, timer: Optional[StageTimer] = None) -> RetrainResult:
    """Retrain a classifier on `config.image_dir` and export it.

    Args:
        config: the run's flags.
        timer: times every part of the run (the CLI's starts with the process); None: a new one.

    Returns:
        RetrainResult with metrics, counts, skipped files and output paths.

    Raises:
        UsageError: bad paths (checked before the long work), unknown extractor.
        DataError: fewer than two classes, no decodable training images.
        ModelError: the extractor cannot be loaded.
        QualityGateError: a gate failed; nothing was exported, the reports were written.
        ExportMismatchError: an export lost more than --max_export_accuracy_drop points; all
            was written.
        Both carry the run's result as `.result`.
    """
    timer = timer or StageTimer()
    # Debug logging shows TensorFlow's own start-up notices too.
    loading = BackgroundImport(STAGES_MODULE, quiet=not logging.getLogger().isEnabledFor(
        logging.DEBUG), then=lambda stages_module: stages_module.start_devices())
    try:
        collection = preflight(config, timer)
        with timer("file index"):
            file_index = FileIndex(config.extraction.bottleneck_dir, config.image_dir)
            file_index.look_up([image.path for image in collection.images],
                               [collection.file_identities.get(image.relpath)
                                for image in collection.images])
    except BaseException:
        loading.close()
        raise
    with timer("import"):
        stages_module = loading.module()
    result: RetrainResult = stages_module.run_stages(config, collection, file_index, timer)
    return result
