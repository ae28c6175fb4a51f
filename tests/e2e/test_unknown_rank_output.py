"""A graph output reached through Identity from a value of unknown rank (Reshape to a computed shape: the
Shape -> Gather -> Concat chain of PaddlePaddle exports such as PP-OCR cls) keeps its declared type when canonicalize
removes the Identity, so the QDQ artifact passes `onnx.checker`, which requires a shape on graph outputs
(issue 17, item 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quantir.backends.registry import get_backend
from quantir.compiler import StaticQuantConfig, quantize


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 8)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
        numpy_helper.from_array(np.array([0], np.int64), "axes0"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
        helper.make_node("Shape", ["h"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], name="batch", axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"], name="unsq"),
        helper.make_node("Concat", ["n1", "minus1"], ["to"], name="cat", axis=0),
        helper.make_node("Reshape", ["h", "to"], ["r"], name="reshape"),
        helper.make_node("Identity", ["r"], ["y"], name="out"),
    ]
    graph = helper.make_graph(
        nodes, "unknown_rank", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_identity_output_keeps_its_declared_shape(tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    onnx.save(_model(), str(source))
    rng = np.random.default_rng(1)
    q = quantize(str(source), StaticQuantConfig(), calib_data=[rng.normal(0, 1, (8, 8)).astype(np.float32)])
    (y,) = q.ir.outputs
    assert y.name == "y" and y.type is not None and y.type.shape is not None and len(y.type.shape) == 2
    artifact = q.save(tmp_path / "out")
    out = onnx.load(str(artifact / "model.onnx")).graph.output[0]
    assert out.type.tensor_type.HasField("shape")
    report = get_backend("onnx_qdq").verify(artifact, {"x": rng.normal(0, 1, (4, 8)).astype(np.float32)})
    assert report.ok and report.coverage == 1.0, report.format()  # verify runs onnx.checker (full check)
