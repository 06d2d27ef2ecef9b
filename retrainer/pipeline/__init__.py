"""The retrain pipeline: the one place that wires the stages, each entered once.

    preflight (output paths, discovery and split, calibration supply) -> file index (which
    files' digests are still known) -> extractor and engine -> bottlenecks -> audit ->
    training -> evaluation -> exports -> the result document -> reports (and the quality
    gates' verdict)

`import tensorflow` alone takes seconds, and a rerun of a command whose results are all kept
under --bottleneck_dir (the vectors, the extractor's specs, the frozen graph, heat maps and
pictures) needs none of it. So TensorFlow is imported only when a stage needs it
(`_background.TensorFlowLoad`): once discovery has counted the images, on a background thread
beside the extraction, when neither this command has finished with this cache before nor the
same flags (paths aside) on this machine (whose user cache then keeps the converted extraction
model and the templates of the graph and checkpoint: `exports.kept`, `training.checkpoint`) and
the collection has at most EARLY_TENSORFLOW_IMAGES images; else at the first stage that needs
it. The later stages' module (`pipeline.stages`) loads on a background thread from the start.
The timer's "import" is only the part of those loads the run waited for. This module itself
imports no TensorFlow.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Optional

from retrainer.cache.file_index import FileIndex
from retrainer.cache.layout import run_result_path
from retrainer.cache.memo import Memo, memo_key
from retrainer.config import PATH_FLAGS, RetrainConfig
from retrainer.io.host import tensorflow_version, usable_cpus, user_cache_dir
from retrainer.pipeline._background import BackgroundImport, TensorFlowLoad, start_devices
from retrainer.pipeline.preflight import preflight
from retrainer.pipeline.timer import StageTimer
from retrainer.reports.painter import Painter
from retrainer.result import RetrainResult

if TYPE_CHECKING:  # loaded by name on a background thread; listed so the import graph shows it
    from retrainer.pipeline import stages  # noqa: F401

STAGES_MODULE = "retrainer.pipeline.stages"
# Above this many images a first run imports TensorFlow only for the stage that needs it (the
# export): its ~0.5 GiB would otherwise sit beside the audit, the run's peak (at a million
# cached vectors 7.06 GiB instead of 6.58), to save seconds of a run that takes minutes.
EARLY_TENSORFLOW_IMAGES = 200_000


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
    tensorflow = TensorFlowLoad(timer, quiet=not logging.getLogger().isEnabledFor(logging.DEBUG))
    finished = Memo(config.extraction.bottleneck_dir, run_result_path)
    command = memo_key("finished command", tensorflow_version(),
                       json.dumps(config.to_json(), sort_keys=True, default=str))
    on_this_machine = Memo(user_cache_dir(), run_result_path)
    flags = memo_key("finished flags", tensorflow_version(), _flags_without_paths(config))
    new_command = finished.read(command) is None
    first_run = new_command and on_this_machine.read(flags) is None
    # matplotlib imported meanwhile on the other core, for the report's pictures (a finished
    # command's are kept)
    pictures = config.reports.report_html is not None or config.reports.summaries_dir is not None
    painter = Painter(start=new_command and pictures and usable_cpus() > 1)
    loading = BackgroundImport(STAGES_MODULE, quiet=tensorflow.quiet, then=start_devices)
    try:
        collection = preflight(config, timer)
        with timer("file index"):
            file_index = FileIndex(config.extraction.bottleneck_dir, config.image_dir)
            file_index.look_up(collection.paths(), collection.file_identities)
        with timer("import"):
            stages_module = loading.module()
        if first_run and len(collection.images) <= EARLY_TENSORFLOW_IMAGES:
            tensorflow.start()  # after the stages' import: one capture of stderr at a time
        result: RetrainResult = stages_module.run_stages(config, collection, file_index, timer,
                                                         tensorflow, painter)
        if tensorflow.started:  # joined before exit (it was started for a run that had it all)
            tensorflow.ready()
    except BaseException:
        painter.close()
        loading.close()
        tensorflow.close()
        raise
    finished.write(command, b"{}\n")
    on_this_machine.write(flags, b"{}\n")
    return result


def _flags_without_paths(config: RetrainConfig) -> str:
    """The run's flags but its paths (only whether an optional output is asked for): what a run
    of the same flags on other data, into other folders, computes with."""
    flags = config.to_json()
    return json.dumps({name: value if name not in PATH_FLAGS else value is not None
                       for name, value in flags.items()}, sort_keys=True, default=str)
