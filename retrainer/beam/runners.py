"""Which Beam runner `retrain-extract` runs on, from `--runner` and the other Beam options.

Beam's own short names (FnApiRunner, DataflowRunner, ...) plus DaskRunner, which Beam knows only
by its full class name; an unknown name is a one-line usage error, not Beam's traceback. The
default is the FnApiRunner: Beam's DirectRunner may hand the pipeline to Prism, which downloads a
binary at run time.
"""

from __future__ import annotations

import importlib
import math

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineRunner

from retrainer.errors import UsageError

DEFAULT_RUNNER = "FnApiRunner"
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
# Images per Dask partition (one task, one shard file): enough tasks for every worker to take
# several and for a lost worker's share to be small, few enough that each amortises its start.
DASK_IMAGES_PER_PARTITION = 256
# What a missing runner module needs installed.
_EXTRAS = {"dask": "pip install 'retrainer[dask]'", "dataflow": "pip install 'apache-beam[gcp]'",
           "interactive": "pip install 'apache-beam[interactive]'"}


def pipeline_options(beam_args: list[str], batch_size: int) -> PipelineOptions:
    """Beam's options from `retrain-extract`'s remaining flags, with the runner named in full.

    Args:
        beam_args: the flags `retrain-extract` does not know (`--runner`, `--project`, ...).
        batch_size: images per extractor call, for the DaskRunner's default partition size.

    Raises:
        UsageError: unknown runner, or one whose package is not installed.
    """
    options = PipelineOptions(beam_args)
    standard = options.view_as(StandardOptions)
    standard.runner = runner_class_name(standard.runner or DEFAULT_RUNNER)
    if is_dask(options):
        from apache_beam.runners.dask.dask_runner import DaskOptions  # needs the .[dask] extra

        dask = options.view_as(DaskOptions)
        if dask.npartitions is None and dask.partition_size is None:
            # The pipeline's elements are batches: this many batches per partition.
            dask.partition_size = math.ceil(DASK_IMAGES_PER_PARTITION / batch_size)
    return options


def is_dask(options: PipelineOptions) -> bool:
    """Whether the pipeline runs on Beam's DaskRunner (see `retrainer.beam.pipeline` for what
    that changes)."""
    return options.view_as(StandardOptions).runner == DASK_RUNNER


def runner_class_name(name: str) -> str:
    """The full class name of the runner `name` (a short name such as DaskRunner, or already
    `package.module.Class`), checked importable.

    Raises:
        UsageError: unknown runner, or one whose package is not installed.
    """
    full_name = _short_names().get(name.lower(), name)
    if "." not in full_name:
        known = ", ".join(sorted({path.rsplit(".", 1)[1] for path in _short_names().values()}))
        raise UsageError(f"--runner {name}: unknown Beam runner. Pass one of {known}, or a "
                         "runner's full class name (package.module.ClassName).")
    module_name, class_name = full_name.rsplit(".", 1)
    try:
        runner = getattr(importlib.import_module(module_name), class_name)
    except ImportError as error:
        install = next((command for key, command in _EXTRAS.items() if key in module_name), None)
        raise UsageError(f"--runner {name} is not installed here ({error}); "
                         f"{install or 'install the package that provides it'}.") from None
    except AttributeError:
        raise UsageError(f"--runner {name}: {module_name} has no {class_name}.") from None
    if not (isinstance(runner, type) and issubclass(runner, PipelineRunner)):
        raise UsageError(f"--runner {name}: {full_name} is not a Beam PipelineRunner.")
    return full_name


def _short_names() -> dict[str, str]:
    """Lower-case short name (with and without 'Runner') -> full class name."""
    names = {}
    for path in (*StandardOptions.ALL_KNOWN_RUNNERS, DASK_RUNNER):
        short = path.rsplit(".", 1)[1].lower()
        names[short] = path
        names[short.removesuffix("runner")] = path
    return names


def run_pipeline(pipeline: beam.Pipeline) -> None:
    """Run `pipeline` to its end. A Dask client it opened is closed (else it holds the process's
    exit for half a minute).

    Raises:
        UsageError: the Dask cluster could not be reached or lost the run (more worker deaths
            than the scheduler retries, the scheduler gone): one line; rerunning resumes.
    """
    try:
        result = pipeline.run()  # the DaskRunner connects its client here
    except OSError as error:
        if not is_dask(pipeline.options) or error.errno is not None:
            raise  # a file system's error: the CLI reports it
        raise UsageError(f"No Dask scheduler answered ({error}). Start one (`dask scheduler`) or "
                         "pass --dask_client_address its address (tcp://HOST:8786).") from None
    try:
        result.wait_until_finish()
    except _dask_failures() as error:
        reason = (str(error).strip().splitlines() or [""])[0]
        raise UsageError(f"The Dask cluster failed the run ({type(error).__name__}: {reason}). "
                         "Check the scheduler's address and its workers' logs, then rerun: "
                         "finished runs are kept and nothing of this one is read.") from None
    finally:
        client = getattr(result, "client", None)  # DaskRunnerResult's
        if client is not None:
            client.close()


def _dask_failures() -> tuple[type[BaseException], ...]:
    """What distributed raises when the cluster, not the code, failed (none without Dask)."""
    try:
        from distributed.client import FutureCancelledError
        from distributed.comm.core import CommClosedError
        from distributed.scheduler import KilledWorker
    except ImportError:
        return ()
    return KilledWorker, CommClosedError, FutureCancelledError
