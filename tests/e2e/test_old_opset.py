"""Opset 11 models convert (issue 17, item 1): quantir raises them to opset 13 for per-channel Q/DQ itself, rewriting
the nodes whose ops changed (Squeeze/Unsqueeze `axes` to inputs; a Softmax over several trailing dims, which opset 13
would apply along one axis only, through Flatten -> Softmax -> Reshape), and the artifacts compute what the opset-11
float model computes, in ONNX Runtime and in OpenVINO."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantir.backends.onnx_proto import OrtRunner
from quantir.backends.registry import get_backend
from quantir.compiler import StaticQuantConfig, convert, prepare


def _opset11_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (16, 24)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.3, (24, 10)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array([-1, 2, 12], np.int64), "split_shape"),
        numpy_helper.from_array(np.array([-1, 24], np.int64), "flat_shape"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Reshape", ["h", "split_shape"], ["h3"], name="to3d"),
        helper.make_node("Softmax", ["h3"], ["p3"], name="softmax3d", axis=1),  # over dims 1 and 2 together
        helper.make_node("Reshape", ["p3", "flat_shape"], ["p"], name="to2d"),
        helper.make_node("Unsqueeze", ["p"], ["pu"], name="unsq", axes=[1]),
        helper.make_node("Squeeze", ["pu"], ["ps"], name="sq", axes=[1]),
        helper.make_node("MatMul", ["ps", "w2"], ["logits"], name="fc2"),
        helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=1),  # rank 2: the same at 13
    ]
    graph = helper.make_graph(
        nodes, "old", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("backend", ["onnx_qdq", "openvino"])
def test_an_opset_11_model_converts_and_keeps_its_meaning(backend: str, tmp_path: Path) -> None:
    source = tmp_path / "old.onnx"
    onnx.save(_opset11_model(), str(source))
    rng = np.random.default_rng(1)
    calib = [rng.normal(0, 1, (16, 16)).astype(np.float32) for _ in range(4)]
    model = convert(prepare(str(source), StaticQuantConfig(), backend=backend).calibrate(calib, progress=False))
    artifact = model.save(tmp_path / backend)
    x = rng.normal(0, 1, (32, 16)).astype(np.float32)
    report = get_backend(backend).verify(artifact, {"x": x})
    assert report.ok and report.coverage == 1.0, report.format()
    legal = model.legalized()
    assert legal.report.opset_before == 11 and legal.report.opset_after == 13
    assert "Softmax node 'softmax3d'" in [c.value for c in legal.report.changed]
    ref = OrtRunner(source)({"x": x})[0]
    got = model(x)
    assert np.abs(got - ref).max() < 0.05, np.abs(got - ref).max()
    assert float(np.mean(got.argmax(1) == ref.argmax(1))) > 0.9


def test_the_upgrade_alone_is_exact_in_float() -> None:
    """Float opset-11 graph vs the same graph upgraded to 13 (no quantization): identical outputs in ORT."""
    from quantir.backends.onnx_proto import emit_model
    from quantir.backends.onnx_proto.opset_upgrade import upgrade_opset
    from quantir.frontends.onnx import import_onnx

    original = _opset11_model()
    graph = import_onnx(original)
    lines = upgrade_opset(graph, 13)
    assert graph.opset == 13 and len(lines) == 3  # softmax3d rewritten; unsq and sq take axes inputs
    assert [n.op_type for n in graph.nodes].count("Flatten") == 1  # the rank-2 Softmax needs no rewrite
    upgraded = emit_model(graph)
    onnx.checker.check_model(upgraded, full_check=True)
    x = np.random.default_rng(2).normal(0, 1, (8, 16)).astype(np.float32)
    ref = OrtRunner(original.SerializeToString())({"x": x})[0]
    got = OrtRunner(upgraded.SerializeToString())({"x": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
