"""A 2-D MatMul by a constant weight followed by a bias Add (how jax2tf and Keras export Dense; magika's model): the
compiler makes it one Gemm with the bias, so ONNX Runtime runs it int8 (left as MatMul+Add, ORT's own MatMul+Add
fusion makes a float Gemm before its QDQ fusion sees the MatMul). Node names hold "/" as TF exports do, which the
OpenVINO verify must map back to runtime nodes. Both backends, real runtimes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantir.compiler.api import quantize
from quantir.compiler.config.quant_config import StaticQuantConfig
from quantir.tools.convert import verify_fresh

rng = np.random.default_rng(0)


def _mlp() -> onnx.ModelProto:
    r = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(r.standard_normal((16, 32)).astype(np.float32) * 0.3, "model/Dense_0/kernel"),
        numpy_helper.from_array(r.standard_normal(32).astype(np.float32) * 0.1, "model/Dense_0/bias"),
        numpy_helper.from_array(r.standard_normal((32, 8)).astype(np.float32) * 0.3, "model/Dense_1/kernel"),
        numpy_helper.from_array(r.standard_normal(8).astype(np.float32) * 0.1, "model/Dense_1/bias"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "model/Dense_0/kernel"], ["h0"], name="model/Dense_0/MatMul"),
        helper.make_node("Add", ["h0", "model/Dense_0/bias"], ["h1"], name="model/Dense_0/BiasAdd"),
        helper.make_node("Relu", ["h1"], ["h2"], name="model/Relu"),
        helper.make_node("MatMul", ["h2", "model/Dense_1/kernel"], ["h3"], name="model/Dense_1/MatMul"),
        helper.make_node("Add", ["h3", "model/Dense_1/bias"], ["y"], name="model/Dense_1/BiasAdd"),
    ]
    graph = helper.make_graph(
        nodes, "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], initializer=inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("backend", ["onnx_qdq", "openvino"])
def test_dense_layers_become_gemms_and_run_int8(backend: str, tmp_path: Path) -> None:
    data = [{"x": rng.standard_normal((16, 16)).astype(np.float32)} for _ in range(4)]
    q = quantize(_mlp(), StaticQuantConfig(), data, backend=backend)
    assert [n.op_type for n in q.ir.nodes] == ["Gemm", "Relu", "Gemm"]
    assert [n.name for n in q.ir.nodes if n.op_type == "Gemm"] == ["model/Dense_0/MatMul", "model/Dense_1/MatMul"]
    report = verify_fresh(backend, q.save(tmp_path / backend, backend=backend), data[0])
    print(report.format())
    assert [r.int8 for r in report.heavy] == [True, True], report.heavy
    got, want = report.run(data[1])[0], onnx_reference(data[1]["x"])
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


def onnx_reference(x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(_mlp().SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def test_a_3d_matmul_keeps_its_add() -> None:
    from quantir.compiler.pass_manager import PassContext, PassManager
    from quantir.compiler.passes import Canonicalize
    from quantir.frontends.onnx import import_onnx

    model = _mlp()
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 16]))
    g = import_onnx(model)
    ctx = PassContext()
    PassManager([Canonicalize()]).run(g, ctx)
    assert [n.op_type for n in g.nodes] == ["MatMul", "Add", "Relu", "MatMul", "Add"]
    assert any("not Conv, Gemm or a 2-D MatMul with a constant weight" in n for n in ctx.notes), ctx.notes
