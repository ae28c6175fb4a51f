"""The quality gate of `quantir convert` (issue 17 item 5): a model whose quantized output collapses against the
float model fails with exit 2, naming the output, its cosine and the first layer whose SQNR collapses, and leaves
no artifact; `--accept-low-accuracy` keeps it with a warning. A healthy model passes the gate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantir.tools.cli import main


def _outlier_model(path: Path, data: Path) -> None:
    """y = x @ w where input channel 0 carries a huge constant-ish outlier that w ignores: the per-tensor input
    step (from min/max) is larger than every other channel, so the quantized input is the zero point there and y
    collapses at the MatMul while the input tensor itself keeps a high SQNR."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (8, 4)).astype(np.float32)
    w[0] = 0.0
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")]
    graph = helper.make_graph(
        nodes, "outlier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [numpy_helper.from_array(w, "w")],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    x = rng.normal(0, 0.05, (32, 8)).astype(np.float32)
    x[:, 0] = 1e4 + rng.normal(0, 1, 32)
    x[0, 0] = -1e4  # min/max span 2e4: a step of ~80 against values of ~0.05
    np.savez(data, x=x)


@pytest.mark.parametrize("target", ["onnx-qdq", "openvino", "all"])
def test_a_collapsed_model_fails_naming_the_first_layer(target: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    model, data, out = tmp_path / "m.onnx", tmp_path / "calib.npz", tmp_path / "out"
    _outlier_model(model, data)
    rc = main(["convert", str(model), "--calib", str(data), "--to", target, "-o", str(out)])
    captured = capsys.readouterr()
    assert rc == 2, captured.out + captured.err
    err = " ".join(captured.err.split())
    assert "collapsed" in err and "'y' (mean cosine" in err, err
    assert "the first layer below 10 dB SQNR is MatMul node 'fc'" in err, err
    assert "--accept-low-accuracy" in err and "set_local" in err and "Traceback" not in err, err
    assert not out.exists()

    rc = main(["convert", str(model), "--calib", str(data), "--to", target, "-o", str(out), "--accept-low-accuracy"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "WARNING (accepted with --accept-low-accuracy)" in captured.out
    assert (out / "quantir.json").is_file() if target != "all" else (out / "onnx_qdq" / "quantir.json").is_file()


def test_a_healthy_model_passes_the_gate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, data, out = tmp_path / "m.onnx", tmp_path / "calib.npz", tmp_path / "out"
    _outlier_model(model, data)
    x = np.random.default_rng(2).normal(0, 1, (32, 8)).astype(np.float32)  # no outlier channel
    np.savez(data, x=x)
    rc = main(["convert", str(model), "--calib", str(data), "-o", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "WARNING" not in text and (out / "quantir.json").is_file(), text
