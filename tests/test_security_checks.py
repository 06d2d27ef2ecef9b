"""`retrainer.security.check_model` on hostile and honest model files, read as data only.

Hostile files are real TensorFlow / TFLite / ONNX files built here (tests.fixtures_security); each
refusal names the op, the node and the file, and nothing the model would write appears.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import graph_pb2, tensor_shape_pb2

from retrainer.errors import ModelError, UntrustedModelError, UsageError
from retrainer.security import ResourceLimits, check_model, model_ops
from retrainer.security.allowlist import ALLOWED_OPS
from retrainer.security.limits import TENSOR_LIMIT_VARIABLE, TOTAL_LIMIT_VARIABLE, parse_size
from retrainer.security.saved_model import read_saved_model
from tests.fixtures_hub import module_kernel, save_tf1_hub_module, save_tf2_module
from tests.fixtures_security import (
    edited_tflite,
    hostile_frozen_graph,
    hostile_saved_model,
    hostile_tf2_module,
    hostile_tflite,
    plain_tflite,
)

TRUST_HINT = "If you trust this file, rerun with --trust_model"


def refusal(path, **kwargs) -> str:
    with pytest.raises(UntrustedModelError) as caught:
        check_model(path, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and TRUST_HINT in message
    return message


# --- the attacks of the issue ---------------------------------------------------------------------

@pytest.mark.parametrize("style, op", [("write_file", "WriteFile (writes files)"),
                                       ("print_v2", "PrintV2 (prints, possibly to a file://)")])
def test_frozen_graph_with_side_effect_is_refused(style, op, tmp_path):
    graph = hostile_frozen_graph(tmp_path / "model.pb", tmp_path / "written.txt", style)

    message = refusal(graph)

    assert f"model file {graph} is refused" in message and f"op {op}" in message
    assert re.search(r"\(node '[^']+'\)", message)
    assert op.split()[0] in model_ops(graph)
    check_model(graph, trust=True)
    assert not (tmp_path / "written.txt").exists()


def test_saved_model_whose_signature_writes_is_refused(tmp_path):
    folder = hostile_saved_model(tmp_path / "saved", tmp_path / "written.txt")

    message = refusal(folder, signature="serving_default")

    assert f"model file {folder / 'saved_model.pb'}" in message
    assert "op WriteFile (writes files)" in message and "in function '__inference_serve" in message
    assert not (tmp_path / "written.txt").exists()


def test_tf2_module_whose_call_writes_is_refused(tmp_path):
    folder = hostile_tf2_module(tmp_path / "module", tmp_path / "written.txt")

    assert "op WriteFile" in refusal(folder)
    assert not (tmp_path / "written.txt").exists()


def test_tf1_hub_module_whose_signature_writes_is_refused(tmp_path):
    folder = save_tf1_hub_module(tmp_path / "module", module_kernel())
    _rewrite_meta_graph(folder, _add_write_before_output)

    assert "op WriteFile" in refusal(folder)


# --- honest models ------------------------------------------------------------------------------

@pytest.mark.parametrize("style",
                         ["call", "call_training", "signature", "feature_map", "not_image"])
def test_test_suite_tf2_modules_pass(style, tmp_path):
    check_model(save_tf2_module(tmp_path / "module", module_kernel(), style=style))


def test_tf1_hub_module_passes_with_its_restore_ops(tmp_path):
    folder = save_tf1_hub_module(tmp_path / "module", module_kernel())
    assert "RestoreV2" in model_ops(folder)
    check_model(folder)


def test_every_export_retrain_writes_passes(deployed_run):
    for path in [deployed_run.graph, deployed_run.saved_model, *deployed_run.tflite.values()]:
        check_model(path)
    check_model(deployed_run.saved_model, signature="serving_default")
    assert model_ops(deployed_run.graph) <= ALLOWED_OPS


# --- where an op hides --------------------------------------------------------------------------

def test_op_inside_a_loop_body_function_is_found(tmp_path):
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
    def loop(values):
        def body(i, total):
            with tf.control_dependencies([tf.io.write_file(str(tmp_path / "w"), "x")]):
                return i + 1, total + values
        return tf.while_loop(lambda i, _: i < 3, body, [tf.constant(0), values])[1]

    graph_def = loop.get_concrete_function().graph.as_graph_def()
    path = tmp_path / "loop.pb"
    path.write_bytes(graph_def.SerializeToString())

    message = refusal(path)

    assert "op WriteFile" in message and "in function 'while_body" in message


def test_call_of_a_function_the_model_does_not_define_is_refused(tmp_path):
    graph_def = graph_pb2.GraphDef()
    call = graph_def.node.add(name="call", op="PartitionedCall")
    call.attr["f"].func.name = "somebody_elses_function"
    path = tmp_path / "call.pb"
    path.write_bytes(graph_def.SerializeToString())

    assert "calls function 'somebody_elses_function', which it does not define" in refusal(path)


def test_tf1_restore_from_a_path_the_model_chooses_is_refused(tmp_path):
    folder = save_tf1_hub_module(tmp_path / "module", module_kernel())

    def read_elsewhere(meta_graph):
        prefix = meta_graph.graph_def.node.add(name="elsewhere", op="Const")
        prefix.attr["dtype"].type = tf.string.as_datatype_enum
        prefix.attr["value"].tensor.CopyFrom(tf.make_tensor_proto("/etc/secrets/model"))
        restore = next(node for node in meta_graph.graph_def.node if node.op == "RestoreV2")
        restore.input[0] = "elsewhere"

    _rewrite_meta_graph(folder, read_elsewhere)

    message = refusal(folder)
    assert "op RestoreV2 reads variables from a path the model chooses" in message


def test_asset_outside_the_model_folder_is_refused(tmp_path):
    folder = save_tf2_module(tmp_path / "module", module_kernel())

    def add_asset(meta_graph):
        meta_graph.asset_file_def.add(filename="../../outside.txt")

    _rewrite_meta_graph(folder, add_asset)

    assert "asset '../../outside.txt' names a file outside" in refusal(folder)


def test_variables_folder_linked_outside_is_refused(tmp_path):
    folder = save_tf2_module(tmp_path / "module", module_kernel())
    shutil.move(folder / "variables", tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", folder / "variables")

    assert "outside the model's folder" in refusal(folder)


def test_unreadable_files_are_model_errors_not_refusals(tmp_path):
    garbage = tmp_path / "garbage.pb"
    garbage.write_bytes(b"\xff\xff\xff not a graph")
    with pytest.raises(ModelError, match="is not a frozen TensorFlow graph") as caught:
        check_model(garbage)
    assert not isinstance(caught.value, UntrustedModelError)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match=r"holds no saved_model\.pb"):
        check_model(empty)


# --- resource bombs -----------------------------------------------------------------------------

def _graph_with(*nodes) -> graph_pb2.GraphDef:
    graph_def = graph_pb2.GraphDef()
    for node in nodes:
        graph_def.node.add().CopyFrom(node)
    return graph_def


def _const(name: str, dtype, shape: list[int], values) -> "tf.compat.v1.NodeDef":
    """A Const NodeDef whose stored values are broadcast to `shape` (nothing is allocated here)."""
    node = tf.compat.v1.NodeDef(name=name, op="Const")
    node.attr["dtype"].type = dtype.as_datatype_enum
    tensor = node.attr["value"].tensor
    tensor.dtype = dtype.as_datatype_enum
    tensor.tensor_shape.dim.extend([tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in shape])
    (tensor.float_val if dtype == tf.float32 else tensor.int_val).extend(values)
    return node


def _write(tmp_path: Path, graph_def) -> Path:
    path = tmp_path / "bomb.pb"
    path.write_bytes(graph_def.SerializeToString())
    return path


def test_four_gigabyte_const_is_refused_before_loading(tmp_path):
    path = _write(tmp_path, _graph_with(_const("huge", tf.float32, [1 << 15, 1 << 15], [1.0])))

    message = refusal(path)

    assert "Const declares a float32 [32768, 32768] (4.0 GiB)" in message
    assert ("over the 1.0 GiB limit for one tensor (raise it with "
            f"{TENSOR_LIMIT_VARIABLE}") in message
    assert "(node 'huge')" in message


def test_fill_to_a_huge_shape_is_refused_unless_the_limit_is_raised(tmp_path, monkeypatch):
    dims = _const("dims", tf.int32, [2], [1 << 20, 1 << 20])
    value = _const("value", tf.float32, [], [0.0])
    fill = tf.compat.v1.NodeDef(name="fill", op="Fill", input=["dims", "value"])
    fill.attr["T"].type = tf.float32.as_datatype_enum
    path = _write(tmp_path, _graph_with(dims, value, fill))

    assert "Fill makes a float32 [1048576, 1048576] (4.0 TiB)" in refusal(path)

    monkeypatch.setenv(TENSOR_LIMIT_VARIABLE, "5T")
    check_model(path)


def test_many_constants_add_up_to_the_model_limit(tmp_path, monkeypatch):
    nodes = [_const(f"c{index}", tf.float32, [1 << 14, 1 << 14], [0.0]) for index in range(5)]
    path = _write(tmp_path, _graph_with(*nodes))

    message = refusal(path)

    assert "(node 'c4')" in message and "5.0 GiB" in message
    assert f"over the 4.0 GiB limit (raise it with {TOTAL_LIMIT_VARIABLE}" in message
    check_model(path, limits=ResourceLimits(max_model_bytes=6 << 30))


def test_a_malformed_limit_is_a_usage_error(tmp_path, monkeypatch):
    path = _write(tmp_path, _graph_with(_const("c", tf.float32, [2], [0.0])))
    monkeypatch.setenv(TOTAL_LIMIT_VARIABLE, "lots")
    with pytest.raises(UsageError, match=f"{TOTAL_LIMIT_VARIABLE} must be a size in bytes"):
        check_model(path)


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(0, 1 << 12), min_size=0, max_size=4),
       dtype=st.sampled_from([tf.float32, tf.int32, tf.float64, tf.uint8]),
       limit=st.integers(1, 1 << 30))
def test_a_const_is_refused_exactly_when_its_declared_bytes_pass_the_limit(shape, dtype, limit,
                                                                           tmp_path_factory):
    path = _write(tmp_path_factory.mktemp("bomb"), _graph_with(_const("c", dtype, shape, [0])))
    declared = int(np.prod(shape, dtype=np.int64)) * dtype.size
    limits = ResourceLimits(max_tensor_bytes=limit, max_model_bytes=1 << 62)
    if declared > limit:
        with pytest.raises(UntrustedModelError, match="limit for one tensor"):
            check_model(path, limits=limits)
    else:
        check_model(path, limits=limits)


@given(st.integers(1, 1 << 40), st.sampled_from(["", "K", "M", "G", "T", "KiB", "gb"]))
def test_sizes_parse_with_binary_suffixes(count, suffix):
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[suffix[:1].upper()]
    assert parse_size(f"{count}{suffix}") == count * scale


# --- helpers ------------------------------------------------------------------------------------

def _rewrite_meta_graph(folder: Path, change) -> None:
    """Apply `change(meta_graph)` to every MetaGraph of the SavedModel in `folder`."""
    model_file, saved_model = read_saved_model(folder)
    for meta_graph in saved_model.meta_graphs:
        change(meta_graph)
    model_file.write_bytes(saved_model.SerializeToString())


def _add_write_before_output(meta_graph) -> None:
    """Make the signature output depend on a WriteFile (as an attacker editing the proto would)."""
    graph_def = meta_graph.graph_def
    for name, value in (("write/filename", "/tmp/never-written"), ("write/contents", "x")):
        node = graph_def.node.add(name=name, op="Const")
        node.attr["dtype"].type = tf.string.as_datatype_enum
        node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
    graph_def.node.add(name="write", op="WriteFile", input=["write/filename", "write/contents"])
    output = meta_graph.signature_def["default"].outputs["default"].name.split(":")[0]
    next(node for node in graph_def.node if node.name == output).input.append("^write")


# --- .tflite ------------------------------------------------------------------------------------

def test_tflite_with_a_flex_op_is_refused(tmp_path):
    model = hostile_tflite(tmp_path / "model.tflite", tmp_path / "written.txt")

    message = refusal(model)

    assert f"model file {model} is refused" in message
    assert "custom op FlexWriteFile runs TensorFlow's WriteFile kernel (Flex)" in message
    assert "(node 'operator 0 of subgraph 0" in message
    assert not (tmp_path / "written.txt").exists()


@pytest.mark.parametrize("code, custom, expected", [
    (32, b"MyPostProcess", "custom op 'MyPostProcess' is not one of TFLite's built-in ops"),
    (32, b"edgetpu-custom-op", "custom op 'edgetpu-custom-op'"),
    (51, None, "a DELEGATE op asks for a delegate to run part of the model"),
])
def test_tflite_custom_and_delegate_ops_are_refused(code, custom, expected, tmp_path):
    def replace_first_op(model):
        model.operatorCodes[0].builtinCode = code
        model.operatorCodes[0].deprecatedBuiltinCode = min(code, 127)
        model.operatorCodes[0].customCode = custom

    path = edited_tflite(plain_tflite(), tmp_path / "model.tflite", replace_first_op)

    assert expected in refusal(path)
    check_model(path, trust=True)


def test_tflite_tensor_of_a_huge_declared_shape_is_refused(tmp_path):
    def enlarge_input(model):
        model.subgraphs[0].tensors[model.subgraphs[0].inputs[0]].shape = [1 << 16, 1 << 16, 3]

    honest = tmp_path / "honest.tflite"
    honest.write_bytes(plain_tflite())
    check_model(honest)
    path = edited_tflite(honest.read_bytes(), tmp_path / "model.tflite", enlarge_input)

    assert "of shape [65536, 65536, 3] takes 48.0 GiB, over the 1.0 GiB limit" in refusal(path)


def test_truncated_tflite_is_a_model_error(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(plain_tflite()[:64])
    with pytest.raises(ModelError, match="truncated or corrupt") as caught:
        check_model(path)
    assert not isinstance(caught.value, UntrustedModelError)


# --- .onnx --------------------------------------------------------------------------------------

def _onnx_model(path: Path, *extra_nodes, domains=(("", 17),), initializers=()) -> Path:
    """images [1, 3, 8, 8] -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Softmax, + extras."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    kernel = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "kernel")
    nodes = [
        helper.make_node("Conv", ["images", "kernel"], ["conv"], name="conv"),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flat"),
        helper.make_node("Softmax", ["flat"], ["probabilities"], name="softmax"),
        *extra_nodes,
    ]
    graph = helper.make_graph(
        nodes, "classifier",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 2])],
        initializer=[kernel, *initializers],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in domains])
    path.write_bytes(model.SerializeToString())
    return path


def test_standard_onnx_model_passes(tmp_path):
    check_model(_onnx_model(tmp_path / "model.onnx"))


def test_onnx_custom_domain_is_refused(tmp_path):
    pytest.importorskip("onnx")
    from onnx import helper

    write = helper.make_node("WriteFile", ["probabilities"], ["done"], name="write",
                             domain="com.example.evil")
    path = _onnx_model(tmp_path / "model.onnx", write,
                       domains=(("", 17), ("com.example.evil", 1)))

    message = refusal(path)
    assert "custom op WriteFile of domain 'com.example.evil' is not a standard ONNX op" in message
    assert "(node 'write')" in message


def test_onnx_domains_imported_but_unused_pass(tmp_path):
    """ONNX Runtime's quantizer imports com.microsoft and other domains its nodes need not use."""
    path = _onnx_model(tmp_path / "model.onnx",
                       domains=(("", 17), ("com.microsoft", 1), ("ai.onnx.training", 1)))
    check_model(path)


def test_onnx_unknown_op_in_the_standard_domain_is_refused(tmp_path):
    pytest.importorskip("onnx")
    from onnx import helper

    path = _onnx_model(tmp_path / "model.onnx",
                       helper.make_node("WriteFile", ["probabilities"], ["done"], name="write"))

    message = refusal(path)
    assert "op WriteFile is not a standard ONNX op (node 'write')" in message


def test_onnx_external_data_outside_the_folder_is_refused(tmp_path):
    pytest.importorskip("onnx")
    from onnx import TensorProto

    stolen = TensorProto(name="stolen", data_type=TensorProto.UINT8, dims=[16],
                         data_location=TensorProto.EXTERNAL)
    for key, value in (("location", "../../etc/passwd"), ("length", "16")):
        entry = stolen.external_data.add()
        entry.key, entry.value = key, value
    path = _onnx_model(tmp_path / "model.onnx", initializers=[stolen])

    assert "tensor 'stolen' reads its data from '../../etc/passwd', outside" in refusal(path)


def test_onnx_constant_of_a_huge_shape_is_refused(tmp_path):
    pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    shape = numpy_helper.from_array(np.array([1 << 20, 1 << 20], np.int64), "shape")
    bomb = helper.make_node("ConstantOfShape", ["shape"], ["zeros"], name="bomb")
    path = _onnx_model(tmp_path / "model.onnx", bomb, initializers=[shape])

    assert "ConstantOfShape makes a tensor of shape [1048576, 1048576]" in refusal(path)
