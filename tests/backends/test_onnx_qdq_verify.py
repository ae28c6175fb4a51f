"""verify_onnx_qdq: fused integer kernels in ORT's optimized model, coverage, and fused vs unfused agreement."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from test_onnx_qdq_legalize import (
    Net,
    add_activations,
    cnn,
    concat,
    layernorm_between,
    matmul_activations,
    matmul_const,
)

from quantir.backends.onnx_proto import save_model
from quantir.backends.onnx_qdq import VerifyReport, emit, legalize_for_onnx_qdq, verify_onnx_qdq
from quantir.ir import Graph, SerializationError
from quantir.ir.clone import clone_graph


def _artifact(n: Net, tmp_path: Path, *, float_model: bool = False) -> VerifyReport:
    g: Graph = n.g
    report = legalize_for_onnx_qdq(g)
    out = emit(g, tmp_path / "art", manifest={"legalize": report})
    path = None
    if float_model:
        plain, _ = clone_graph(g)
        for v in plain.values():
            v.quant = None
        path = tmp_path / "float.onnx"
        save_model(plain, path)
    return verify_onnx_qdq(out, n.feeds, float_model=path)


def test_cnn_conv_and_gemm_fuse_with_full_coverage(tmp_path: Path) -> None:
    n = cnn()
    n.quantize()
    r = _artifact(n, tmp_path, float_model=True)
    assert r.kernels == {"QLinearConv": 1, "QGemm": 1}
    assert r.leftover == {"QuantizeLinear": 1, "DequantizeLinear": 1}  # the input Q and the output DQ only
    assert r.coverage == 1.0 and r.ok and r.missed == [] and r.unmatched_kernels == []
    assert [(row.name, row.expected, row.actual, row.int8) for row in r.nodes] == [
        ("conv1", "QLinearConv", "QLinearConv", True),
        ("fc", "QGemm", "QGemm", True),
    ]
    (out,) = r.outputs
    assert out.name == "y" and out.lsb is not None and out.lsb <= 1.0 and out.rel is None
    assert out.vs_float is not None and 0 < out.vs_float < 1.0  # quantization error against the float model
    text = r.format()
    assert "ONNX Runtime: int8 coverage 100% (2/2 Conv/MatMul/Gemm)" in text
    assert "QLinearConv=1" in text and "conv1" in text
    assert r.summary_line().startswith("coverage 100% (2/2 Conv/MatMul/Gemm); QGemm=1, QLinearConv=1; fused vs")
    assert r.summary_line().endswith("; ok")
    (y,) = r.run(n.feeds)
    assert y.shape == (2, 5)


def test_gemm_beta_leaves_a_float_gemm(tmp_path: Path) -> None:
    n = cnn(beta=0.5)
    n.quantize()
    r = _artifact(n, tmp_path)
    assert r.kernels == {"QLinearConv": 1} and r.leftover["Gemm"] == 1
    assert r.coverage == 1.0  # legalize dequantized the Gemm, so only the Conv counts
    assert r.ok


@pytest.mark.parametrize(
    ("build", "kernel", "name"),
    [
        (lambda: matmul_const(quantize_output=True), "QLinearMatMul", "mm"),
        (lambda: matmul_const(quantize_output=False), "MatMulIntegerToFloat", "mm"),
        (add_activations, "QLinearAdd", "add"),
        (concat, "QLinearConcat", "cat"),
        (matmul_activations, "QLinearMatMul", "mm_aa"),
    ],
)
def test_single_op_graphs_fuse(build: Callable[[], Net], kernel: str, name: str, tmp_path: Path) -> None:
    n = build()
    r = _artifact(n, tmp_path)
    assert r.kernels == {kernel: 1}
    assert [(row.name, row.actual) for row in r.nodes] == [(name, kernel)]
    assert r.ok, r.format()
    (out,) = r.outputs
    assert out.lsb is not None and out.lsb <= 1.0 if out.rel is None else out.rel <= 1e-2


def test_layernorm_between_matmuls(tmp_path: Path) -> None:
    r = _artifact(layernorm_between(), tmp_path)
    assert r.kernels == {"QLinearMatMul": 2} and r.coverage == 1.0 and r.ok
    assert r.leftover == {"QuantizeLinear": 2, "DequantizeLinear": 2}  # x's Q, LayerNorm's DQ and Q, y's DQ


def test_verify_refuses_a_folder_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(SerializationError, match="is not a quantir artifact"):
        verify_onnx_qdq(tmp_path, {})
    assert os.listdir(tmp_path) == []


def test_shared_dq_fan_out_and_unnamed_nodes_are_matched(tmp_path: Path) -> None:
    """%a feeds two MatMuls through one DQ (ORT duplicates it), %m is both a graph output and read by a MatMul, and
    no node has a name: the emitter names them so the fused kernels can be found."""
    n = Net("fanout")
    a = n.input("a", (4, 16))
    m = n.op("MatMul", [a, n.weight("w1", 16, 16)], "m")
    y = n.op("MatMul", [m, n.weight("w2", 16, 8)], "y")
    z = n.op("MatMul", [a, n.weight("w3", 16, 8)], "z")
    n.g.outputs += [m, y, z]
    n.quantize()
    for node in n.g.nodes:
        node.name = ""
    r = _artifact(n, tmp_path)
    assert [(row.name, row.actual) for row in r.nodes] == [
        ("MatMul_m", "QLinearMatMul"), ("MatMul_y", "QLinearMatMul"), ("MatMul_z", "QLinearMatMul")]  # fmt: skip
    assert r.coverage == 1.0 and r.ok, r.format()
    assert [o.name for o in r.outputs] == ["m", "y", "z"] and all(o.lsb is not None and o.lsb <= 1 for o in r.outputs)


def test_verify_runs_onnx_checker_on_the_artifact(tmp_path: Path) -> None:
    """emit leaves the full onnx.checker pass to verify; a model that fails it is named with the checker's reason."""
    import onnx

    n = matmul_const(quantize_output=True)
    legalize_for_onnx_qdq(n.g)
    out = emit(n.g, tmp_path / "art", manifest={})
    model = onnx.load(os.fspath(out / "model.onnx"))
    model.graph.node[0].op_type = "NoSuchOp"
    onnx.save(model, os.fspath(out / "model.onnx"))
    with pytest.raises(SerializationError, match=r"model\.onnx' fails onnx\.checker: .*NoSuchOp"):
        verify_onnx_qdq(out, n.feeds)
