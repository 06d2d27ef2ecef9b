"""Preflight: the checks that can fail before the long work and need no TensorFlow.

In the order a user meets them: output paths (created as the run would and probed with a temporary
file, so a typo or a read-only folder is reported in a second, naming the flag), discovery (the
classes and their split), the int8 calibration supply. They run while TensorFlow loads
(`retrainer.pipeline`); the checks that need it (a --tfhub_module folder's model check, the
extractor and its engine, whether fine-tuning can train it) follow in `pipeline.extractor`. A
--tfhub_module folder is checked before anything is written, so then the output paths wait for it.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from retrainer.config import RetrainConfig
from retrainer.data.collection import ImageCollection
from retrainer.data.discovery import discover_images
from retrainer.data.manifest import read_manifest
from retrainer.data.split import TRAINING
from retrainer.errors import UsageError
from retrainer.exports.options import ExportOptions
from retrainer.exports.quantization import INT8, MIN_CALIBRATION_IMAGES, too_few_calibration_images
from retrainer.formats.graph_contract import metadata_path
from retrainer.io.atomic import remove_stale_temporaries
from retrainer.io.storage import AnyPath, RemotePath, is_url, probe_writable
from retrainer.pipeline.timer import StageTimer

log = logging.getLogger(__name__)


def preflight(config: RetrainConfig, timer: StageTimer) -> ImageCollection:
    """Run the TensorFlow-free checks of a retrain run; time discovery.

    Returns:
        The discovered, split images.

    Raises:
        UsageError: an unwritable or clashing output path.
        DataError: fewer than two classes; too few training images for int8 calibration.
    """
    if not names_module_folder(config.tfhub_module):
        check_outputs(config)
    with timer("discover"):
        if config.labels_csv is not None:
            collection = read_manifest(config.labels_csv, config.image_dir,
                                       config.validation_percentage, config.testing_percentage,
                                       config.multi_label, config.retrain_py_image_dir)
        else:
            collection = discover_images(config.image_dir, config.validation_percentage,
                                         config.testing_percentage, config.retrain_py_image_dir)
    _check_calibration_supply(config.exports, collection)
    return collection


def names_module_folder(handle: str) -> bool:
    """Whether --tfhub_module may be a local module folder (which must pass the model check
    before anything is written). A registered name that is also a local folder counts."""
    return not is_url(handle) and Path(handle).expanduser().is_dir()


def check_outputs(config: RetrainConfig) -> None:
    """Every output path can be written; temporaries an interrupted run left there are gone."""
    check_output_paths(config)
    remove_stale_export_temporaries(config.exports)


def _check_calibration_supply(options: ExportOptions, collection: ImageCollection) -> None:
    """int8 needs at least MIN_CALIBRATION_IMAGES training images.

    Raises:
        DataError: saying how many are needed and how many the training split has.
    """
    if INT8 not in options.tflite_files and INT8 not in options.onnx_files:
        return
    training = sum(image.split == TRAINING for image in collection.images)
    if training < MIN_CALIBRATION_IMAGES:
        raise too_few_calibration_images(training, options.tflite_calibration_images,
                                         f"the training split of {collection.image_dir}")
    if training < options.tflite_calibration_images:
        log.warning("int8 calibration: only %d training images, fewer than "
                    "--tflite_calibration_images %d; calibrating on all of them.",
                    training, options.tflite_calibration_images)


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
    for flag, path in config.exports.deployable_files:
        if path.is_dir():
            raise UsageError(f"--{flag} {path} is a folder; expected a file path.")
        folders[flag] = path.parent
    for flag, folder in folders.items():
        _check_writable_folder(flag, folder)


def remove_stale_export_temporaries(options: ExportOptions) -> None:
    """Delete temporaries that a killed earlier run left next to this run's exports."""
    exports = [options.output_graph, metadata_path(options.output_graph), options.output_labels]
    if options.saved_model_dir is not None:
        exports.append(options.saved_model_dir)
    exports += [path for _, path in options.deployable_files]
    for export in exports:
        for leftover in remove_stale_temporaries(export):
            log.info("Removed %s, left by an interrupted run.", leftover)


def _check_saved_model_dir(path: AnyPath) -> None:
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
