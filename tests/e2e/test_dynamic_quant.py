"""Dynamic quantization (issue 14), end to end in the real runtimes: ONNX Runtime runs com.microsoft::
DynamicQuantizeMatMul (activations quantized per batch), OpenVINO a FullyConnected on i8 weights with the CPU
plugin's dynamic quantization switched on by the artifact; no calibration data is needed; the real all-MiniLM-L6-v2
keeps cosine >= 0.99."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantir.backends.registry import get_backend
from quantir.compiler import DynamicQuantConfig, StaticQuantConfig, quantize
from quantir.compiler.isa import detect_cpu
from quantir.ir import ConfigError
from quantir.ir.printer import print_graph
from quantir.tools.cli import main
from quantir.tools.minilm import CALIBRATION_COUNT, batches, embed, export_minilm, load_sentences, mean_cosine

SATURATING_CPU = pytest.mark.xfail(
    detect_cpu().int8_saturates,
    reason=(
        "full-range int8 weights saturate in the u8 x s8 kernels of x86 CPUs without VNNI/AMX (vpmaddubsw adds pairs in"
        " int16): measured on an AVX2 AMD EPYC, dynamic int8 MatMuls up to 0.09 off the formula; quantir's own "
        "calibration uses 7-bit weights there (compiler/isa.py)"
    ),
    strict=False,
)

RNG = np.random.default_rng(3)
W1 = RNG.standard_normal((64, 96)).astype(np.float32) * 0.2
W2 = RNG.standard_normal((96, 10)).astype(np.float32) * 0.2
X = RNG.standard_normal((5, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """x -> MatMul -> Relu -> MatMul, plus another reader of x (an Add that must read x in float)."""
    nodes = [helper.make_node("MatMul", ["x", "fc1.weight"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="act"),
             helper.make_node("MatMul", ["r", "fc2.weight"], ["y"], name="fc2"),
             helper.make_node("Add", ["x", "x"], ["s"], name="twice")]  # fmt: skip
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 64])],
        [numpy_helper.from_array(W1, "fc1.weight"), numpy_helper.from_array(W2, "fc2.weight")],
    )  # fmt: skip
    path = tmp_path_factory.mktemp("mlp") / "mlp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _dynamic_reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ONNX DynamicQuantizeLinear of x (uint8, range widened to 0) times int8 symmetric per-column w, in float."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    sx = (hi - lo) / 255
    zx = np.clip(np.rint(-lo / sx), 0, 255)
    xq = (np.clip(np.rint(x / sx) + zx, 0, 255) - zx) * sx
    sw = np.abs(w).max(axis=0) / 127
    return xq @ (np.clip(np.rint(w / sw), -127, 127) * sw)


@SATURATING_CPU
@pytest.mark.parametrize("backend", ["onnx_qdq", "openvino"])
def test_dynamic_runs_the_integer_kernel_without_calibration(mlp: Path, backend: str, tmp_path: Path) -> None:
    q = quantize(str(mlp), DynamicQuantConfig(), backend=backend)  # no calib_data: nothing to calibrate
    assert "observer=dynamic" in print_graph(q.ir)  # the activation's type says: quantized at run time
    artifact = q.save(tmp_path / backend, backend=backend)
    report = get_backend(backend).verify(artifact, {"x": X})
    assert report.coverage == 1.0 and len(report.nodes) == 2 and not report.disagreements, report.format()
    y, s = report.run({"x": X})
    np.testing.assert_array_equal(s, X + X)  # other readers of x read it in float
    if backend == "onnx_qdq":
        ops = [n.op_type for n in onnx.load(artifact / "model.onnx").graph.node]
        assert ops.count("DynamicQuantizeMatMul") == 2 and "MatMul" not in ops, ops
        h = np.maximum(_dynamic_reference(X, W1), 0)
        np.testing.assert_allclose(y, _dynamic_reference(h, W2), rtol=1e-3, atol=1e-3)
    else:
        manifest = json.loads((artifact / "quantir.json").read_text())
        assert manifest["openvino"]["runtime_config"] == {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 32}
        assert all(r.actual == "FullyConnected" and r.precision == "i8" for r in report.nodes)
        np.testing.assert_allclose(y, np.maximum(X @ W1, 0) @ W2, rtol=0.05, atol=0.05)


def test_dynamic_config_rules(mlp: Path) -> None:
    cfg = DynamicQuantConfig()
    assert (cfg.w_dtype, cfg.w_sym, cfg.w_granularity, cfg.act_dtype, cfg.act_sym) == (
        "int8", True, "per_channel", "uint8", False)  # fmt: skip
    cfg.set_local("fc2", StaticQuantConfig(w_dtype="fp32", act_dtype="fp32"))
    rows = {d.name: d for d in quantize(str(mlp), cfg).decisions()}
    assert rows["fc1"].quantized and "dynamic int8" in rows["fc1"].reason
    assert not rows["fc2"].quantized and "set_local('fc2')" in rows["fc2"].reason
    with pytest.raises(ConfigError, match=r"dynamic activations are uint8 asymmetric per tensor"):
        quantize(str(mlp), DynamicQuantConfig(act_sym=True))
    per_tensor = {d.name: d for d in quantize(str(mlp), DynamicQuantConfig(w_granularity="per_tensor")).decisions()}
    assert "per tensor" in per_tensor["fc1"].reason


def test_cli_dynamic_without_calibration(mlp: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "dynamic.json"
    config.write_text(json.dumps({"dynamic_quant": {"w_granularity": "per_channel"}}))
    rc = main(["convert", str(mlp), "--to", "onnx-qdq", "--config", str(config), "-o", str(tmp_path / "out")])
    text = capsys.readouterr().out
    assert rc == 0 and "dynamic quantization: no calibration" in text and "coverage: 100% (2/2" in text, text


@pytest.mark.slow
def test_minilm_dynamic_cosine(tmp_path: Path) -> None:
    model = export_minilm()
    held = load_sentences()[CALIBRATION_COUNT : CALIBRATION_COUNT + 64]
    reference = embed(str(model), held)
    q = quantize(str(model), DynamicQuantConfig())
    for backend in ("onnx_qdq", "openvino"):
        runner = get_backend(backend).load(q.save(tmp_path / backend, backend=backend))
        out = np.concatenate([runner({k: v for k, v in f.items() if k in runner.input_names})[0]
                              for f in batches(held, 16)])  # fmt: skip
        cos = mean_cosine(reference, out)
        print(f"\nMiniLM dynamic int8 {backend}: cos {cos:.4f}")  # measured 0.9939 (ORT), 0.9994 (OpenVINO)
        assert cos >= 0.99, (backend, cos)
