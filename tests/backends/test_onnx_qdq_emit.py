"""lower_to_qdq and emit: Q/DQ structure, int32 bias, per-channel axes, output naming, checker, atomic artifact."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from test_onnx_qdq_legalize import Net, cnn, layernorm_between, matmul_const

from quantir.backends.onnx_qdq import emit, legalize_for_onnx_qdq, lower_to_qdq
from quantir.backends.onnx_qdq.emit import ir_sha256
from quantir.compiler.qparams.scales import quantize
from quantir.ir import DType, Graph, PassError, QuantType, SerializationError, Tensor, print_graph


def _legal_cnn() -> tuple[Graph, Net]:
    n = cnn()
    g = n.quantize()
    legalize_for_onnx_qdq(g)
    return g, n


def _ops(graph: Graph) -> Counter[str]:
    return Counter(node.op_type for node in graph.nodes)


def _const(graph: Graph, name: str) -> Tensor:
    t = graph.constants[name].const
    assert t is not None
    return t


def test_lowering_structure_of_the_cnn() -> None:
    g, _ = _legal_cnn()
    before = print_graph(g)
    low = lower_to_qdq(g)
    assert print_graph(g) == before  # the input graph is untouched
    ops = _ops(low)
    assert (ops["QuantizeLinear"], ops["DequantizeLinear"]) == (5, 9)  # x r m f y; + conv/fc weights and biases
    assert not any(v.quant for v in low.values())
    w, b = _const(low, "conv1.weight_quantized"), _const(low, "conv1.bias_quantized")
    assert (w.dtype, w.shape, b.dtype, b.shape) == (DType.I8, (4, 3, 3, 3), DType.I32, (4,))
    bias_type = g.constants["conv1.bias"].quant
    assert isinstance(bias_type, QuantType)
    np.testing.assert_array_equal(b.numpy(), quantize(_const(g, "conv1.bias").numpy(), bias_type))
    np.testing.assert_array_equal(_const(low, "conv1.bias_scale").numpy(), bias_type.scale)
    assert _const(low, "x_scale").shape == () and _const(low, "x_zero_point").dtype is DType.U8
    assert (
        _const(low, "conv1.weight_zero_point").shape == (4,)
        and not _const(low, "conv1.weight_zero_point").numpy().any()
    )
    dq = {n.name: n for n in low.nodes if n.op_type == "DequantizeLinear"}
    assert dq["conv1.weight_DequantizeLinear"].attr("axis") == 0 and dq["fc.weight_DequantizeLinear"].attr("axis") == 0
    assert dq["conv1.bias_DequantizeLinear"].attr("axis") == 0 and dq["x_DequantizeLinear"].attr("axis") is None
    conv = next(n for n in low.nodes if n.name == "conv1")
    assert [v.name if v else "" for v in conv.inputs] == [
        "x_DequantizeLinear_Output",
        "conv1.weight_DequantizeLinear_Output",
        "conv1.bias_DequantizeLinear_Output",
    ]
    relu = next(n for n in low.nodes if n.name == "relu")
    assert relu.inputs[0] is conv.output() and relu.output().uses()[0].node.op_type == "QuantizeLinear"  # folded
    # The graph output keeps its name and ends Q -> DQ -> y; the Gemm writes the renamed internal value.
    (y,) = low.outputs
    assert y.name == "y" and y.producer is not None and y.producer.op_type == "DequantizeLinear"
    assert next(n for n in low.nodes if n.name == "fc").output().name == "y_QuantizeLinear_Input"


def test_lowering_refuses_per_channel_below_opset_13() -> None:
    g = matmul_const(quantize_output=True).g
    g.opset_imports[""] = 11
    with pytest.raises(PassError, match=r"%w needs per-channel QuantizeLinear/DequantizeLinear \(axis\), which exists "
                       r"from opset 13; the graph is opset 11"):  # fmt: skip
        lower_to_qdq(g)


def test_emit_writes_checked_model_and_manifest(tmp_path: Path) -> None:
    g, n = _legal_cnn()
    report = legalize_for_onnx_qdq(g)
    out = emit(g, tmp_path / "art", manifest={"source": "unit test", "legalize": report})
    assert out == tmp_path / "art" and sorted(p.name for p in out.iterdir()) == ["model.onnx", "quantir.json"]
    assert {oct(p.stat().st_mode & 0o777) for p in (out, *out.iterdir())} == {"0o755", "0o644"}
    model = onnx.load(os.fspath(out / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    bias = next(i for i in model.graph.initializer if i.name == "conv1.bias_quantized")
    assert bias.data_type == onnx.TensorProto.INT32 and numpy_helper.to_array(bias).shape == (4,)
    doc = json.loads((out / "quantir.json").read_text())
    assert doc["schema"] == "quantir.artifact/1" and doc["backend"] == "onnx_qdq" and doc["model"] == "model.onnx"
    assert doc["opset"] == 17 and doc["source"] == "unit test" and doc["ir_sha256"] == ir_sha256(g)
    assert doc["quantized_nodes"] == [
        {"name": "conv1", "op_type": "Conv", "module": "conv1", "kernel": "QLinearConv"},
        {"name": "fc", "op_type": "Gemm", "module": "fc", "kernel": "QGemm"},
    ]
    y = g.outputs[0].quant
    assert isinstance(y, QuantType)
    assert doc["outputs"]["y"] == {"quantized": True, "dtype": "u8", "scale": [float(y.scale)],
                                   "zero_point": [int(y.zero_point)]}  # fmt: skip
    assert doc["legalize"]["nodes"][1] == {"node": "relu", "op_type": "Relu", "module": "relu", "quantized": True,
                                           "reason": "Relu folded into Q"}  # fmt: skip
    sess = ort.InferenceSession(os.fspath(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (result,) = sess.run(None, n.feeds)
    assert result.shape == (2, 5) and np.isfinite(result).all()


def test_ir_hash_changes_with_weights_and_scales() -> None:
    g, _ = _legal_cnn()
    h = ir_sha256(g)
    assert h == ir_sha256(g) and len(h) == 64
    g.outputs[0].quant = None
    assert ir_sha256(g) != h


def test_emit_replaces_a_previous_artifact(tmp_path: Path) -> None:
    g, _ = _legal_cnn()
    out = tmp_path / "art"
    emit(g, out, manifest={"run": 1})
    emit(layernorm_between().g, out, manifest={"run": 2})
    assert json.loads((out / "quantir.json").read_text())["run"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no temporary or old folder left behind
    (tmp_path / "empty").mkdir()
    emit(g, tmp_path / "empty", manifest={})


def test_emit_refuses_a_folder_that_is_not_an_artifact(tmp_path: Path) -> None:
    g, _ = _legal_cnn()
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(SerializationError, match=r"refusing to replace '.*mine': the folder is not empty and holds no "
                       r"quantir artifact"):  # fmt: skip
        emit(g, out, manifest={})
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_unwritable_destination_is_a_serialization_error() -> None:
    g, _ = _legal_cnn()
    # /proc refuses new entries even to root, so this runs wherever the tests run.
    with pytest.raises(SerializationError, match=r"cannot write the artifact '/proc/quantir-art'"):
        emit(g, "/proc/quantir-art", manifest={})
    assert not Path("/proc/quantir-art").exists()


def test_missing_or_file_parent_is_a_serialization_error_and_leaves_nothing(tmp_path: Path) -> None:
    g, _ = _legal_cnn()
    with pytest.raises(
        SerializationError, match=r"cannot write the artifact '.*nowhere/art': \[Errno 2\] No such file"
    ):
        emit(g, tmp_path / "nowhere" / "art", manifest={})
    (tmp_path / "file").write_text("")
    with pytest.raises(
        SerializationError, match=r"cannot write the artifact '.*file/art': \[Errno 20\] Not a directory"
    ):
        emit(g, tmp_path / "file" / "art", manifest={})
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_manifest_errors(tmp_path: Path) -> None:
    g, _ = _legal_cnn()
    with pytest.raises(SerializationError, match=r"manifest keys \['opset'\] are written by the onnx_qdq emitter"):
        emit(g, tmp_path / "a", manifest={"opset": 3})
    with pytest.raises(SerializationError, match="is not JSON-serializable"):
        emit(g, tmp_path / "a", manifest={"when": object()})
    assert list(tmp_path.iterdir()) == []


def test_failed_emit_keeps_the_previous_artifact_and_leaves_no_temporary(tmp_path: Path) -> None:
    g, _ = _legal_cnn()
    out = emit(g, tmp_path / "art", manifest={"run": 1})
    g.outputs[0].type = None  # ONNX needs a type on every graph output: save_model fails inside the temporary folder
    with pytest.raises(SerializationError, match="graph output %y has no type"):
        emit(g, out, manifest={"run": 2})
    assert json.loads((out / "quantir.json").read_text())["run"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_external_data_artifact_loads_and_verifies(tmp_path: Path) -> None:
    from quantir.backends.onnx_qdq import verify_onnx_qdq

    g, n = _legal_cnn()
    out = emit(g, tmp_path / "art", manifest={}, external_data=True)
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.onnx.data", "quantir.json"]
    report = verify_onnx_qdq(out, n.feeds)
    assert report.kernels == {"QLinearConv": 1, "QGemm": 1} and report.ok
