"""Every path under --bottleneck_dir, in one place:

    <bottleneck_dir>/
      <extractor id>/<CACHE_FORMAT>-<H>x<W>/          one extractor's vectors (`namespace`)
        <aa>/<sha256>.npy                             an image's vector (`entry_path`)
        distorted/<settings>-seed<seed>/<aa>/<sha256>-v<i>.npy
                                                      its distorted variants (`distorted_subfolder`)
        shards/<run id>/...                           retrain-extract's runs (`shards_folder`)
      audit-results-v1/<aa>/<key>.json               the audit's findings (`audit_findings_path`)
      audit-signatures-v2/<H>x<W>/<aa>.bin           its thumbnails and hashes, made by the decode
                                                      at the extractor's input size
                                                      (`audit_signatures_folder`)
      file-index-v1/<hash of a dataset folder>.index  its files' digests, .npy format (`file_index_path`)
      heat-maps-v1/<aa>/<key>.maps                   the report's heat maps (`heat_maps_path`)
      heat-maps-v1/<aa>/<key>.html                   their figures (`heat_map_gallery_path`)
      frozen-graphs-v1/<aa>/<key>.sha256             the SHA-256 of the frozen graph its inputs
                                                      made (`frozen_graph_record_path`)
      pictures-v1/<aa>/<key>.png                     the report's plots, keyed by what they
                                                      show (`picture_path`)
      checkpoints-v1/<aa>/<key>.sha256               the SHA-256s of the checkpoint files its
                                                      inputs wrote (`checkpoint_record_path`)
      novelty-v1/<aa>/<key>.npz                      the novelty score's fit (`novelty_path`)
      graph-templates-v1/<aa>/<key>.pb               a frozen graph's structure without the
                                                      run's constants (`graph_template_path`; kept
                                                      in the user's cache, per machine)
      checkpoint-templates-v1/<aa>/<key>.ckpt        a head checkpoint's layout for one pair of
                                                      shapes (`checkpoint_template_path`; in the
                                                      user's cache)
      feature-map-models-v1/<aa>/<key>.tflite        an extractor's layers up to its last map,
                                                      float32, for the report's heat maps
                                                      (`feature_map_model_path`; in the user's cache)
      run-results-v1/<aa>/<key>.json                 results of one run's later stages, keyed
                                                      by their inputs (`run_result_path`)

Keys are content hashes, so no dataset path ever appears here. Changing a path or a format is a
change here (bump `CACHE_FORMAT` when the vectors of the same image would differ).
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING

from retrainer.io.storage import AnyPath, as_path

if TYPE_CHECKING:  # only its fields are read: the cache's paths need no TensorFlow
    from retrainer.extractors import ExtractorSpec

# Bump when the stored format or the pixels fed to extractors (decoding, resizing) change.
CACHE_FORMAT = "v1"
ENTRY_SUFFIX = ".npy"
SHARDS_FOLDER = "shards"
_AUDIT_FINDINGS = "audit-results-v1"
_AUDIT_SIGNATURES = "audit-signatures-v2"
_FILE_INDEX = "file-index-v1"
_HEAT_MAPS = "heat-maps-v1"
_FROZEN_GRAPHS = "frozen-graphs-v1"
_PICTURES = "pictures-v1"
_RUN_RESULTS = "run-results-v1"
_CHECKPOINTS = "checkpoints-v1"
_NOVELTY = "novelty-v1"
_GRAPH_TEMPLATES = "graph-templates-v1"
_CHECKPOINT_TEMPLATES = "checkpoint-templates-v1"
_FEATURE_MAP_MODELS = "feature-map-models-v1"


def _keyed(root: os.PathLike[str] | str, folder: str, key: str, suffix: str) -> AnyPath:
    """A file named by its key under `folder`, in a sub-folder per the key's first two
    characters (so no folder holds more than a few thousand files)."""
    return as_path(root) / folder / key[:2] / f"{key}{suffix}"


def namespace(spec: ExtractorSpec) -> str:
    """The cache folder of one extractor, relative to the cache root: "<id>/<format>-<H>x<W>"."""
    height, width = spec.input_size
    return f"{spec.id}/{CACHE_FORMAT}-{height}x{width}"


def extractor_folder(root: os.PathLike[str] | str, spec: ExtractorSpec) -> AnyPath:
    """`<root>/<namespace(spec)>`: where one extractor's plain vectors and shard runs live."""
    return as_path(root) / namespace(spec)


MIRRORED_SUBFOLDER = "mirrored"  # vectors of mirrored validation images (--tta auto's check)


def distorted_subfolder(settings: str, seed: int) -> str:
    """The sub-folder of an extractor folder holding the distorted variants of one set of
    distortion settings and seed."""
    return f"distorted/{settings}-seed{seed}"


def entry_path(folder: AnyPath, key: str) -> AnyPath:
    """The entry of `key` (a content hash, maybe with a suffix) in a vector folder."""
    return folder / entry_name(key)


def entry_name(key: str) -> str:
    """`entry_path` relative to its vector folder, as a string (for many local lookups)."""
    return f"{key[:2]}/{key}{ENTRY_SUFFIX}"


def entry_key(path: os.PathLike[str] | str) -> str:
    """The key an entry file is named by (`entry_path`'s inverse)."""
    return as_path(path).name.removesuffix(ENTRY_SUFFIX)


def entry_pattern(folder: str) -> str:
    """A glob (tf.io.gfile) that matches every entry of a vector folder, not its sub-folders."""
    return f"{folder.rstrip('/')}/??/*{ENTRY_SUFFIX}"


def shards_folder(folder: str) -> str:
    """Where retrain-extract's shard runs of one extractor folder live (a path or URL string)."""
    return f"{folder.rstrip('/')}/{SHARDS_FOLDER}"


def audit_findings_folder(root: os.PathLike[str] | str) -> AnyPath:
    """The audit's cached findings, one file per dataset key."""
    return as_path(root) / _AUDIT_FINDINGS


def audit_findings_path(root: os.PathLike[str] | str, key: str) -> AnyPath:
    """The audit's cached findings for one dataset key."""
    return _keyed(root, _AUDIT_FINDINGS, key, ".json")


def audit_signatures_folder(root: os.PathLike[str] | str,
                            input_size: tuple[int, int]) -> AnyPath:
    """The audit's cached thumbnails and perceptual hashes of images decoded for an extractor
    input size (a JPEG's decode scale depends on it), sharded by hash prefix."""
    height, width = input_size
    return as_path(root) / _AUDIT_SIGNATURES / f"{height}x{width}"


def file_index_path(root: os.PathLike[str] | str, dataset: str) -> AnyPath:
    """The file index of one dataset folder (`cache.file_index`), named by a hash of its path."""
    name = hashlib.sha256(os.path.abspath(dataset).encode("utf-8", "surrogateescape")).hexdigest()
    return as_path(root) / _FILE_INDEX / f"{name[:32]}.index"  # not ".npy": no entry


def file_index_folder(root: os.PathLike[str] | str) -> AnyPath:
    """Where the file indexes of every dataset live."""
    return as_path(root) / _FILE_INDEX


def heat_maps_path(root: os.PathLike[str] | str, key: str) -> AnyPath:
    """The report's heat maps of one frozen graph over one set of images (`key`: their hash)."""
    return _keyed(root, _HEAT_MAPS, key, ".maps")  # .npy format; not an entry


def heat_map_gallery_path(root: os.PathLike[str] | str, key: str) -> AnyPath:
    """The report's heat-map figures (HTML) of one frozen graph over one set of image files."""
    return _keyed(root, _HEAT_MAPS, key, ".html")


def frozen_graph_record_path(root: os.PathLike[str] | str, key: str) -> AnyPath:
    """The SHA-256 of the frozen graph that one set of inputs (`key`: their hash) froze to."""
    return _keyed(root, _FROZEN_GRAPHS, key, ".sha256")


def picture_path(root: os.PathLike[str] | str, key: str) -> AnyPath:
    """A report picture (PNG) drawn from one set of inputs (`key`: their hash)."""
    return _keyed(root, _PICTURES, key, ".png")


def run_result_path(root: os.PathLike[str] | str, key: str) -> AnyPath:
    """A small JSON result of one run stage (the engine it resolved to, --tta auto's choice, the
    novelty fit's figures, a finished command's record), keyed by a hash of its inputs."""
    return _keyed(root, _RUN_RESULTS, key, ".json")


def checkpoint_record_path(root: os.PathLike[str] | str, key: str) -> AnyPath:
    """The SHA-256s of the head checkpoint's files that one set of inputs (`key`) wrote."""
    return _keyed(root, _CHECKPOINTS, key, ".sha256")


def novelty_path(root: os.PathLike[str] | str, key: str) -> AnyPath:
    """The novelty score fitted on one set of vectors (`key`: a hash of their images)."""
    return _keyed(root, _NOVELTY, key, ".npz")


def graph_template_path(root: os.PathLike[str] | str, key: str) -> AnyPath:
    """A frozen graph's template (`formats.graph_template`) for one structure (`key`)."""
    return _keyed(root, _GRAPH_TEMPLATES, key, ".pb")


def checkpoint_template_path(root: os.PathLike[str] | str, key: str) -> AnyPath:
    """A head checkpoint's template (`formats.checkpoint_template`) for one pair of shapes."""
    return _keyed(root, _CHECKPOINT_TEMPLATES, key, ".ckpt")


def feature_map_model_path(root: os.PathLike[str] | str, key: str) -> AnyPath:
    """An extractor's map model (`explain.lite_cam`) for one extractor and input size."""
    return _keyed(root, _FEATURE_MAP_MODELS, key, ".tflite")
