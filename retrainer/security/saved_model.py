"""Checking a SavedModel folder (also a TF2 or TF1 Hub-format module) the way TensorFlow loads it.

`tf.saved_model.load` takes one of two paths, and so does the check:
- one MetaGraph with an object graph (TF2): the loader restores variables with its own ops and
  calls functions named by the object graph: the entry point used (a signature, or every function
  the objects expose), resource initializers, checkpoint restore functions and registered
  gradients. The MetaGraph's saver functions are never run on this path.
- otherwise (TF1, and TF1 Hub modules): for every MetaGraph, the nodes that the saver's restore op,
  the init ops and the signatures depend on. Restore ops must read the saver's filename tensor,
  which the loader feeds with the model's own `variables/variables`.

Variables and assets must resolve (symlinks followed) inside the model's folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from google.protobuf import text_format
from google.protobuf.message import DecodeError
from tensorflow.core.framework import variable_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from retrainer.errors import ModelError
from retrainer.io.storage import AnyPath
from retrainer.security.allowlist import ALLOWED_OPS
from retrainer.security.declared_sizes import dtype_bytes
from retrainer.security.limits import Budget, element_count, format_size
from retrainer.security.refusal import refused
from retrainer.security.tf_graph import GraphCheck

SAVED_MODEL_PB = "saved_model.pb"
SAVED_MODEL_PBTXT = "saved_model.pbtxt"
INIT_OP_SIGNATURE = "__saved_model_init_op"
# Collections whose nodes TensorFlow's TF1 loader runs as initializers.
_INIT_COLLECTIONS = ("saved_model_main_op", "legacy_init_op", "table_initializer",
                     "local_init_op")
_LOCAL_VARIABLES = "local_variables"
_ASSETS_COLLECTION = "saved_model_assets"
# Object-graph children the TF2 loader calls while loading (resources and restored objects).
_LOAD_TIME_CHILDREN = ("_create_resource", "_initialize", "_destroy_resource")


def check_saved_model(folder: AnyPath, signature: Optional[str], budget: Budget,
                      allowed: Optional[frozenset[str]] = ALLOWED_OPS) -> set[str]:
    """Refuse the SavedModel in `folder` unless all that loading it and `signature` run is allowed.

    Args:
        folder: the SavedModel / module folder.
        signature: the signature the caller will run; None = every entry point it exposes.
        budget: the resource limits' running totals.
        allowed: the allowlist; None: refuse no op, list the ops.

    Returns:
        With `allowed=None`, the ops that loading and the entry points would run.

    Raises:
        UntrustedModelError: an op outside the allowlist, a restore or asset outside the folder,
            a declared size over a limit.
        ModelError: no readable saved_model.pb(txt).
    """
    model_file, saved_model = read_saved_model(folder)
    meta_graphs = list(saved_model.meta_graphs)
    if len(meta_graphs) == 1 and meta_graphs[0].HasField("object_graph_def"):
        ops = _check_tf2(model_file, meta_graphs[0], signature, budget, allowed)
    else:
        ops = set()
        for meta_graph in meta_graphs:
            ops |= _check_tf1(model_file, meta_graph, signature, budget, allowed)
    _check_inside(folder, model_file, meta_graphs)
    return ops


def read_saved_model(folder: AnyPath) -> tuple[AnyPath, Any]:
    """(file read, SavedModel message): saved_model.pb, else saved_model.pbtxt, as TensorFlow does.

    Raises:
        ModelError: neither file, or one that does not parse.
    """

    saved_model = saved_model_pb2.SavedModel()
    binary, text = folder / SAVED_MODEL_PB, folder / SAVED_MODEL_PBTXT
    try:
        if binary.is_file():
            saved_model.ParseFromString(binary.read_bytes())
            return binary, saved_model
        if text.is_file():
            text_format.Parse(text.read_bytes().decode("utf-8"), saved_model)
            return text, saved_model
    except (OSError, DecodeError, text_format.ParseError, UnicodeDecodeError) as error:
        raise ModelError(f"cannot read SavedModel {folder}: {_first_line(error)}") from None
    raise ModelError(f"{folder} holds no {SAVED_MODEL_PB}: not a SavedModel or TF Hub module")


def _check_tf2(model_file: AnyPath, meta_graph: Any, signature: Optional[str], budget: Budget,
               allowed: Optional[frozenset[str]]) -> set[str]:
    graph = GraphCheck(meta_graph.graph_def, model_file, allowed=allowed)
    objects = meta_graph.object_graph_def
    entry = (_signature_functions(objects, signature) if signature is not None
             else _object_functions(objects.nodes))
    for name in [*entry, *_load_time_functions(objects.nodes)]:
        graph.check_function(name)
    graph.check_gradients()
    graph.check_sizes(budget)
    for index, node in enumerate(objects.nodes):
        if node.WhichOneof("kind") == "variable":
            _check_variable(model_file, node.variable, budget, index)
    return graph.ops


def _check_tf1(model_file: AnyPath, meta_graph: Any, signature: Optional[str], budget: Budget,
               allowed: Optional[frozenset[str]]) -> set[str]:
    saver = meta_graph.saver_def
    graph = GraphCheck(meta_graph.graph_def, model_file,
                       restore_prefix=saver.filename_tensor_name or None, allowed=allowed)
    roots = [saver.restore_op_name] if saver.restore_op_name else []
    signatures = dict(meta_graph.signature_def)
    init = signatures.pop(INIT_OP_SIGNATURE, None)
    if signature is not None:
        signatures = {signature: signatures[signature]} if signature in signatures else {}
    for used in [*signatures.values(), *([init] if init is not None else [])]:
        roots += [info.name for info in used.outputs.values() if info.name]
    collections = meta_graph.collection_def
    for key in _INIT_COLLECTIONS:
        if key in collections:
            roots += list(collections[key].node_list.value)
    if _LOCAL_VARIABLES in collections:
        roots += _initializers(collections[_LOCAL_VARIABLES].bytes_list.value)
    graph.check_reachable(roots)
    graph.check_gradients()
    graph.check_sizes(budget)
    return graph.ops


def _signature_functions(objects: Any, signature: str) -> list[str]:
    """The function behind `signature` in the TF2 object graph (the loader's `.signatures`)."""
    nodes = objects.nodes
    signatures = next((child.node_id for child in nodes[0].children
                       if child.local_name == "signatures"), None) if nodes else None
    if signatures is None:
        return []
    for child in nodes[signatures].children:
        if child.local_name == signature:
            return list(_object_functions([nodes[child.node_id]]))
    return []


def _object_functions(nodes: Iterable[Any]) -> Iterator[str]:
    """Names of the concrete functions object-graph nodes hold."""
    for node in nodes:
        kind = node.WhichOneof("kind")
        if kind == "function":
            yield from node.function.concrete_functions
        elif kind == "bare_concrete_function":
            yield node.bare_concrete_function.concrete_function_name


def _load_time_functions(nodes: Any) -> Iterator[str]:
    """Functions the TF2 loader runs itself: resource set-up, checkpoint save/restore functions."""
    nodes = list(nodes)
    for node in nodes:
        targets = [child.node_id for child in node.children
                   if child.local_name in _LOAD_TIME_CHILDREN]
        for saveable in node.saveable_objects.values():
            targets += [saveable.save_function, saveable.restore_function]
        yield from _object_functions(nodes[index] for index in targets if 0 <= index < len(nodes))


def _check_variable(model_file: AnyPath, variable: Any, budget: Budget, index: int) -> None:
    count = element_count([dim.size for dim in variable.shape.dim])
    nbytes = (count or 0) * dtype_bytes(variable.dtype)
    broken = budget.tensor(nbytes, stored=False)  # its VarHandleOp already counted to the total
    if broken is not None:
        raise refused(model_file, f"variable {variable.name or index!r} declares "
                                  f"{format_size(nbytes)}, {broken}")


def _initializers(variable_defs: Iterable[bytes]) -> list[str]:

    names = []
    for serialized in variable_defs:
        variable = variable_pb2.VariableDef()
        variable.ParseFromString(serialized)
        names += [name for name in (variable.initializer_name, variable.snapshot_name) if name]
    return names


def _check_inside(folder: AnyPath, model_file: AnyPath, meta_graphs: list[Any]) -> None:
    """Variables files and assets must resolve inside `folder` (a restore reads nothing else)."""
    assets = [asset.filename for meta_graph in meta_graphs for asset in meta_graph.asset_file_def]
    for meta_graph in meta_graphs:
        if _ASSETS_COLLECTION in meta_graph.collection_def:
            assets += _asset_names(meta_graph.collection_def[_ASSETS_COLLECTION])
    for name in assets:
        if os.path.isabs(name) or ".." in Path(name).parts:
            raise refused(model_file, f"asset {name!r} names a file outside the model's assets/ "
                                      "folder")
    if not isinstance(folder, Path):
        return  # object stores have no symlinks; names were checked above
    root = os.path.realpath(folder)
    paths = [folder / "assets" / name for name in assets]
    variables = folder / "variables"
    if variables.is_dir():
        paths += [variables, *variables.iterdir()]
    for path in paths:
        real = os.path.realpath(path)
        if os.path.commonpath([root, real]) != root:
            raise refused(model_file, f"{path} resolves to {real}, outside the model's folder")


def _asset_names(collection: Any) -> list[str]:

    names = []
    for packed in collection.any_list.value:
        asset = meta_graph_pb2.AssetFileDef()
        if packed.Unpack(asset):
            names.append(asset.filename)
    return names


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
