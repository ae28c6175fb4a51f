"""A Conv whose bias is exported as its own Add, reached through a Reshape of a constant (PaddlePaddle's squeeze-
excite `conv*_se_*_offset`, as in PP-OCR cls). Left as an Add, its output quantizer sat between the Conv and the
bias; on this 1x1-spatial, 88-channel input OpenVINO 2026.4's CPU plugin segfaults on that pattern at the first
inference (checked: with canonicalize before fold-constants this test fails with the probe's SIGSEGV error; issue 17
item 4). fold-constants then canonicalize make the constant the Conv's bias, so the artifact
has no such Add, and `quantir convert` (which runs the artifact in a child process first) succeeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantir.tools.cli import main


def _se_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.2, (22, 88, 1, 1)).astype(np.float32), "se_1_weights"),
        numpy_helper.from_array(rng.normal(0, 0.5, (22,)).astype(np.float32), "se_1_offset"),
        numpy_helper.from_array(np.array([1, 22, 1, 1], np.int64), "bias_shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "se_1_weights"], ["conv"], name="se_1", kernel_shape=[1, 1]),
        helper.make_node("Reshape", ["se_1_offset", "bias_shape"], ["offset"], name="offset_reshape"),
        helper.make_node("Add", ["conv", "offset"], ["biased"], name="se_1_add"),
        helper.make_node("Relu", ["biased"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes, "se", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 88, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 22, 1, 1])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("target", ["openvino", "onnx-qdq"])
def test_bias_add_after_conv_is_folded_and_the_artifact_runs(target: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    source = tmp_path / "se.onnx"
    onnx.save(_se_model(), str(source))
    data = tmp_path / "calib.npz"
    np.savez(data, x=np.random.default_rng(1).normal(0.3, 1, (16, 88, 1, 1)).astype(np.float32))
    out = tmp_path / "out"
    rc = main(["convert", str(source), "--calib", str(data), "--to", target, "-o", str(out)])
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert rc == 0, text
    assert "int8 kernel coverage: 100% (1/1" in text, text
    reference = onnx.load(str(out / ("model.qdq.onnx" if target == "openvino" else "model.onnx")))
    ops = [n.op_type for n in reference.graph.node]
    assert "Add" not in ops and "Reshape" not in ops, ops
    (conv,) = [n for n in reference.graph.node if n.op_type == "Conv"]
    assert len(conv.input) == 3  # the constant is the Conv's bias
