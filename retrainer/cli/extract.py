"""`retrain-extract`: compute `retrain`'s bottleneck vectors with Apache Beam, on any Beam runner.

Options `retrain` also has keep its names and defaults; every other option goes to Beam's
PipelineOptions (`--runner`, `--direct_num_workers`, `--project`, `--dask_client_address`, ...).
The summary (or `--json`) goes to stdout, logs to stderr. Exit codes as `retrain`'s (0 ok, 2
usage, 4 model); unreadable images are reported, not fatal. Needs `pip install 'retrainer[beam]'`.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import click

from retrainer.cache.options import EXTRACTOR_PRECISIONS
from retrainer.cli import (
    VERBOSITIES,
    configure_logging,
    option,
    quiet_tensorflow,
    reports_errors,
    version_option,
)
from retrainer.config import DEFAULT_EXTRACTOR, default_bottleneck_dir
from retrainer.engines import AUTO
from retrainer.errors import UsageError

_MAX_UNREADABLE_SHOWN = 20


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100,
                                 "ignore_unknown_options": True, "allow_extra_args": True})
@version_option("retrain-extract")
@option("image_dir", required=True, metavar="DIR",
        help="Folder (or gs:// prefix) with one sub-folder of images per class.")
@option("bottleneck_dir", default=lambda: str(default_bottleneck_dir()),
        show_default="${XDG_CACHE_HOME:-~/.cache}/retrainer/bottlenecks",
        help="Cache of bottleneck vectors, the one `retrain --bottleneck_dir` reads.")
@option("tfhub_module", default=DEFAULT_EXTRACTOR, show_default=True,
        help="Feature extractor, as for `retrain`.")
@option("image_size", type=click.IntRange(min=1),
        help="Input size for extractors that accept several (default: the module's own).")
@option("batch_size", type=click.IntRange(min=1),
        help="Most images per extractor call on a worker (default: retrain's, 32).")
@option("extractor_precision", type=click.Choice(EXTRACTOR_PRECISIONS), default=AUTO,
        show_default=True,
        help="How the workers run the extractor, as `retrain --extractor_precision`: auto is "
        "resolved where retrain-extract is launched, by retrain's rule, so a `retrain` on that "
        "machine with the same flag reuses every vector.")
@option("trust_model", is_flag=True,
        help="Load --tfhub_module without checking its ops first: only for a module you trust "
        "(docs/security.md).")
@option("logging_verbosity", type=click.Choice(VERBOSITIES, case_sensitive=False),
        default="INFO", show_default=True, help="How much to log on stderr.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the summary line and errors.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.pass_context
@reports_errors
def main(context: click.Context, /, logging_verbosity: str, quiet: bool, as_json: bool,
         **options: Any) -> None:
    """Compute the bottleneck vectors of IMAGE_DIR with Apache Beam; `retrain` then reuses them.

    \b
    Examples:
      retrain-extract --image_dir photos --runner FnApiRunner \\
          --direct_running_mode multi_processing --direct_num_workers 2
      retrain-extract --image_dir /shared/photos --bottleneck_dir /shared/cache \\
          --runner DaskRunner --dask_client_address tcp://scheduler:8786
      retrain-extract --image_dir gs://bucket/photos --bottleneck_dir gs://bucket/cache \\
          --runner DataflowRunner --project P --region R --temp_location gs://bucket/tmp \\
          --sdk_container_image IMAGE
      retrain --image_dir photos    # reuses every vector
    """
    configure_logging("ERROR" if quiet else logging_verbosity)
    if logging_verbosity.upper() != "DEBUG":  # Beam's and Dask's INFO lines are not our progress
        logging.getLogger("apache_beam").setLevel(max(logging.getLogger().level, logging.WARNING))
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # read when Dask loads
    quiet_tensorflow(verbose=logging_verbosity.upper() == "DEBUG")
    try:
        from retrainer.beam.pipeline import ExtractConfig, run_extraction
    except ImportError as error:
        raise UsageError(f"retrain-extract needs Apache Beam ({error}); install it with "
                         "`pip install 'retrainer[beam]'`.") from error
    config = ExtractConfig(**{name: value for name, value in options.items()
                              if value is not None or name == "image_size"})
    result = run_extraction(config, list(context.args))
    if as_json:
        click.echo(json.dumps(result.to_json(), ensure_ascii=False))
        return
    click.echo(f"Bottleneck vectors: {result.computed} computed, {result.already_cached} already "
               f"cached, {len(result.unreadable)} unreadable ({result.extractor_precision}, "
               f"{result.seconds:.1f} s).")
    if quiet:
        return
    for path, reason in result.unreadable[:_MAX_UNREADABLE_SHOWN]:
        click.echo(f"  unreadable: {path}: {reason}")
    if len(result.unreadable) > _MAX_UNREADABLE_SHOWN:
        click.echo(f"  ... and {len(result.unreadable) - _MAX_UNREADABLE_SHOWN} more (all in "
                   "--json)")
    click.echo(f"Wrote: {result.run_dir}" if result.run_dir else
               f"Nothing new to write in {result.namespace}.")


if __name__ == "__main__":
    main()
