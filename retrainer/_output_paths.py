"""Fail fast on unusable output paths, before any long work (a `retrain` helper).

Creates the output folders (as the run would) and probes each with a temporary file, so a typo or
a read-only folder is reported in a second, naming the flag, not after the bottlenecks are computed.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from retrainer._files import remove_stale_temporaries
from retrainer.errors import UsageError
from retrainer.graph_contract import metadata_path
from retrainer.storage import AnyPath, RemotePath, probe_writable

if TYPE_CHECKING:
    from retrainer.config import RetrainConfig

log = logging.getLogger(__name__)


def check_output_paths(config: RetrainConfig) -> None:
    """Check every output path of `config` can be written.

    Raises:
        UsageError: naming the flag and the path.
    """
    files = {"output_graph": config.output_graph, "output_labels": config.output_labels,
             "checkpoint_path": config.checkpoint_path}
    files.update({flag: path for flag, path in (("metrics_file", config.metrics_file),
                                                ("report_html", config.report_html))
                  if path is not None})
    if not config.skip_audit:
        files["audit_file"] = config.audit_file
    folders = {"bottleneck_dir": config.bottleneck_dir, "summaries_dir": config.summaries_dir}
    if config.intermediate_store_frequency > 0:
        folders["intermediate_output_graphs_dir"] = config.intermediate_output_graphs_dir
    for flag, path in files.items():
        if path.is_dir():
            raise UsageError(f"--{flag} {path} is a folder; expected a file path.")
        folders[flag] = path.parent
    if config.saved_model_dir is not None:
        _check_saved_model_dir(config.saved_model_dir)
        folders["saved_model_dir"] = config.saved_model_dir.parent
    for flag, path in _deployable_files(config):
        if path.is_dir():
            raise UsageError(f"--{flag} {path} is a folder; expected a file path.")
        folders[flag] = path.parent
    for flag, folder in folders.items():
        _check_writable_folder(flag, folder)


def remove_stale_export_temporaries(config: RetrainConfig) -> None:
    """Delete temporaries that a killed earlier run left next to this run's exports."""
    exports = [config.output_graph, metadata_path(config.output_graph), config.output_labels]
    if config.saved_model_dir is not None:
        exports.append(config.saved_model_dir)
    exports += [path for _, path in _deployable_files(config)]
    for export in exports:
        for leftover in remove_stale_temporaries(export):
            log.info("Removed %s, left by an interrupted run.", leftover)


def _deployable_files(config: RetrainConfig) -> list[tuple[str, Path]]:
    """(flag, path) of every .tflite and .onnx file the run will write."""
    from retrainer.exports.quantization import onnx_paths, tflite_paths

    files = []
    if config.tflite_output_file is not None:
        files += [("tflite_output_file", path) for path in
                  tflite_paths(config.tflite_output_file, config.tflite_quantization).values()]
    if config.onnx_output_file is not None:
        files += [("onnx_output_file", path) for path in
                  onnx_paths(config.onnx_output_file, config.onnx_quantization).values()]
    return files


def _check_saved_model_dir(path: Path) -> None:
    """Only a SavedModel (or nothing) may be replaced: never delete a user's unrelated folder."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"--saved_model_dir {path} is a file; expected a folder path.")
    if path.is_dir() and any(path.iterdir()) and not (path / "saved_model.pb").is_file():
        raise UsageError(
            f"--saved_model_dir {path} exists and is not a SavedModel; it would be replaced. "
            "Pass a new or empty folder, or an earlier --saved_model_dir."
        )


def _check_writable_folder(flag: str, folder: AnyPath) -> None:
    try:
        if isinstance(folder, RemotePath):
            probe_writable(folder)
            return
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        reason = error.strerror or error
        if isinstance(error, (FileExistsError, NotADirectoryError)):  # mkdir's words for this
            blocker = next((path for path in (folder, *folder.parents) if path.is_file()), None)
            reason = f"{blocker} is a file, not a folder" if blocker else reason
        raise UsageError(
            f"cannot write to {folder} (for --{flag}): {reason}. "
            f"Pass a writable path with --{flag}."
        ) from error
