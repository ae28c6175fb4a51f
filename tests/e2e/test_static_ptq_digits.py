"""Issue 3 acceptance on the bundled digits CNN, end to end with real data, ONNX Runtime and onnx:

static int8 PTQ with the default config keeps held-out top-1 within 0.5 pt of FP32, every Conv/Gemm runs as a fused
integer kernel, the artifact explains every op, runs anywhere ORT runs with the same outputs, and `set_local`
fallbacks (by module path, by op type, name beating type) are honoured in the written ONNX graph.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from quantir.backends.onnx_qdq.verify import verify_onnx_qdq
from quantir.compiler.api import convert, prepare
from quantir.compiler.config.quant_config import StaticQuantConfig
from quantir.compiler.decisions import node_label
from quantir.compiler.quantized_model import QuantizedModel
from quantir.tools.digits import DigitsSplit, bundled_model_path, load_digits_split

MODEL = bundled_model_path()
HEAVY = ("Conv", "Gemm")
QDQ = ("QuantizeLinear", "DequantizeLinear")
FP32 = StaticQuantConfig(w_dtype="fp32", act_dtype="fp32")


@pytest.fixture(scope="module")
def digits() -> DigitsSplit:
    return load_digits_split()


def _quantize(cfg: StaticQuantConfig, digits: DigitsSplit) -> QuantizedModel:
    """The given config, calibrated on all 256 calibration images (the config's sampling size is 100)."""
    prepared = prepare(str(MODEL), cfg).calibrate(digits.calib_x, sampling_size=len(digits.calib_x))
    model = convert(prepared)
    assert model.ctx.calibration["samples"] == 256
    return model


@pytest.fixture(scope="module")
def quantized(digits: DigitsSplit) -> QuantizedModel:
    return _quantize(StaticQuantConfig(), digits)


@pytest.fixture(scope="module")
def artifact(quantized: QuantizedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits") / "int8"
    written = quantized.save(out)
    assert written == out.absolute()
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "quantir.json"]
    return out


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _top1(logits: np.ndarray, labels: np.ndarray) -> float:
    assert logits.shape == (len(labels), 10)
    return float(np.mean(logits.argmax(axis=1) == labels))


def _heavy_names(model: QuantizedModel) -> dict[str, str]:
    """Module path (provenance) -> IR node name, for the Conv and Gemm ops."""
    return {d.module or "": d.name for d in model.decisions() if d.op_type in HEAVY}


def _producers(path: Path) -> tuple[dict[str, onnx.NodeProto], dict[str, onnx.NodeProto]]:
    graph = onnx.load(str(path / "model.onnx")).graph
    producer = {out: node for node in graph.node for out in node.output}
    return {node.name: node for node in graph.node}, producer


def _fed_by_dq(path: Path, node_name: str) -> list[bool]:
    """For each input of `node_name` in the artifact's model.onnx: is it the output of a DequantizeLinear?"""
    nodes, producer = _producers(path)
    node = nodes[node_name]
    return [i in producer and producer[i].op_type == "DequantizeLinear" for i in node.input]


# ---- accuracy and fusion -------------------------------------------------------------------------------------------


def test_int8_top1_within_half_a_point_of_fp32(quantized: QuantizedModel, digits: DigitsSplit) -> None:
    fp32 = _top1(_session(MODEL).run(None, {"x": digits.test_x})[0], digits.test_y)
    int8 = _top1(quantized(digits.test_x), digits.test_y)
    print(f"\ndigits held-out top-1 on {len(digits.test_y)} images: fp32 {fp32:.2%}, int8 {int8:.2%}")
    assert len(digits.test_y) == 597
    assert fp32 == pytest.approx(594 / 597)  # the documented 99.50%
    assert int8 >= fp32 - 0.005, f"int8 top-1 {int8:.2%} is more than 0.5 pt below fp32 {fp32:.2%}"


def test_every_quantized_conv_and_gemm_runs_as_a_fused_integer_kernel(
    quantized: QuantizedModel, artifact: Path, digits: DigitsSplit
) -> None:
    report = verify_onnx_qdq(artifact, {"x": digits.test_x}, float_model=MODEL)
    print("\n" + report.format())
    assert report.coverage == 1.0
    assert report.ok, report.format()
    assert report.kernels == {"QLinearConv": 2, "QGemm": 2}
    assert "Conv" not in report.leftover and "Gemm" not in report.leftover
    fused = {r.module: (r.op_type, r.actual) for r in report.nodes}
    assert fused == {"conv1": ("Conv", "QLinearConv"), "conv2": ("Conv", "QLinearConv"),
                     "fc1": ("Gemm", "QGemm"), "fc2": ("Gemm", "QGemm")}  # fmt: skip
    # the IR quantized exactly these four, and the report covers all of them
    assert {d.module for d in quantized.decisions() if d.op_type in HEAVY and d.quantized} == set(fused)
    assert report.coverage_text() == "100% (4/4 Conv/MatMul/Gemm)"


# ---- explanations --------------------------------------------------------------------------------------------------


def test_manifest_lists_a_decision_with_a_reason_for_every_node(quantized: QuantizedModel, artifact: Path) -> None:
    manifest = json.loads((artifact / "quantir.json").read_text())
    decisions = manifest["decisions"]
    assert [d["name"] for d in decisions] == [node_label(n) for n in quantized.ir.nodes]
    for d in decisions:
        assert set(d) == {"name", "op_type", "module", "quantized", "reason"}
        assert isinstance(d["quantized"], bool)
        assert isinstance(d["reason"], str) and d["reason"].strip(), d
    # every non-Q/DQ node of the written ONNX graph is explained, and nothing else is listed
    graph = onnx.load(str(artifact / "model.onnx")).graph
    assert {n.name for n in graph.node if n.op_type not in QDQ} == {d["name"] for d in decisions}
    heavy = {d["module"]: d["quantized"] for d in decisions if d["op_type"] in HEAVY}
    assert heavy == {"conv1": True, "conv2": True, "fc1": True, "fc2": True}
    assert manifest["calibration"]["samples"] == 256
    assert manifest["config"] == StaticQuantConfig().to_dict()


def test_report_names_every_op_and_gives_float_ops_a_reason(quantized: QuantizedModel) -> None:
    text = quantized.report()
    rows = quantized.decisions()
    assert len(rows) == len(quantized.ir.nodes)
    lines = text.splitlines()
    assert lines[0].split() == ["op", "type", "module", "int8", "reason"]
    body = lines[1 : 1 + len(rows)]
    for d, line in zip(rows, body, strict=True):
        words = line.split()
        assert words[0] == d.name and words[1] == d.op_type
        assert ("yes" if d.quantized else "no") in words[2:4]
        assert line.rstrip().endswith(d.reason)
        if not d.quantized:
            assert d.reason.strip(), f"float op {d.name} has no reason"
    floats = [d for d in rows if not d.quantized]
    assert floats, "the digits CNN has float shape ops (Shape, Squeeze, Concat)"
    assert {d.op_type for d in floats} >= {"Shape", "Concat"}
    n_int8 = sum(d.quantized for d in rows)
    assert lines[-1] == f"{n_int8}/{len(rows)} ops quantized; 4/4 Conv/MatMul/Gemm"


# ---- the artifact stands alone -------------------------------------------------------------------------------------


def test_artifact_in_a_fresh_session_matches_the_quantized_model(
    quantized: QuantizedModel, artifact: Path, digits: DigitsSplit
) -> None:
    sess = _session(artifact / "model.onnx")
    assert [i.name for i in sess.get_inputs()] == ["x"]
    for x in (digits.test_x, digits.test_x[:1], digits.calib_x[:7]):
        fresh = sess.run(None, {"x": x})[0]
        ours = quantized(x)
        assert fresh.dtype == np.float32 and fresh.shape == (len(x), 10)
        np.testing.assert_array_equal(fresh, ours)
    # and it is really quantized: not bit-identical to the float model
    floats = _session(MODEL).run(None, {"x": digits.test_x})[0]
    assert not np.array_equal(floats, quantized(digits.test_x))
    np.testing.assert_allclose(quantized(digits.test_x), floats, atol=0.5)


# ---- set_local fallbacks -------------------------------------------------------------------------------------------


def _ort_kernels(path: Path, tmp: Path) -> dict[str, str]:
    """Node name -> op type in ORT's optimized model (ORT_ENABLE_EXTENDED, where the QDQ transformers run)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp / "ort_optimized.onnx")
    ort.InferenceSession(str(path / "model.onnx"), so, providers=["CPUExecutionProvider"])
    return {n.name: n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node}


def _fc1_float(digits: DigitsSplit) -> QuantizedModel:
    cfg = StaticQuantConfig()
    cfg.set_local("fc1", FP32)  # "fc1" is the torch module path recorded as provenance
    return _quantize(cfg, digits)


def _conv_float(digits: DigitsSplit) -> QuantizedModel:
    cfg = StaticQuantConfig()
    cfg.set_local("Conv", FP32)
    return _quantize(cfg, digits)


def _name_beats_type(digits: DigitsSplit) -> QuantizedModel:
    cfg = StaticQuantConfig()
    cfg.set_local("conv1", StaticQuantConfig())  # set first: order does not matter, a name rule beats a type rule
    cfg.set_local("Conv", FP32)
    return _quantize(cfg, digits)


def test_set_local_module_path_keeps_fc1_float(digits: DigitsSplit, tmp_path: Path) -> None:
    model = _fc1_float(digits)
    names = _heavy_names(model)
    by_module = {d.module: d for d in model.decisions() if d.op_type in HEAVY}
    assert not by_module["fc1"].quantized
    assert by_module["fc1"].reason == "set_local('fc1') -> fp32 (fallback)"
    assert all(by_module[m].quantized for m in ("conv1", "conv2", "fc2"))

    out = model.save(tmp_path / "fc1_float")
    # fc1's weight and bias stay float initializers: no DequantizeLinear feeds them
    data, weight, bias = _fed_by_dq(out, names["fc1"])
    assert not weight and not bias
    nodes, producer = _producers(out)
    initializers = {t.name: t for t in onnx.load(str(out / "model.onnx")).graph.initializer}
    for name in nodes[names["fc1"]].input[1:]:
        assert initializers[name].data_type == onnx.TensorProto.FLOAT
    # Its activation comes from the int8 Reshape's DequantizeLinear through an exact Max(x, x) guard, so that ORT's
    # WeightBiasQuantization cannot re-quantize the fallback's weights.
    assert not data
    guard = producer[nodes[names["fc1"]].input[0]]
    assert guard.op_type == "Max" and guard.input[0] == guard.input[1]
    for module in ("conv1", "conv2", "fc2"):
        assert all(_fed_by_dq(out, names[module])), module

    manifest = json.loads((out / "quantir.json").read_text())
    assert [u["module"] for u in manifest["quantized_nodes"]] == ["conv1", "conv2", "fc2"]
    assert manifest["config"]["local"] == {"fc1": {"w_dtype": "fp32", "act_dtype": "fp32"}}
    report = verify_onnx_qdq(out, {"x": digits.test_x[:64]})
    assert report.ok and report.coverage == 1.0
    assert {r.module: r.actual for r in report.nodes} == {"conv1": "QLinearConv", "conv2": "QLinearConv",
                                                          "fc2": "QGemm"}  # fmt: skip
    fp32 = _top1(_session(MODEL).run(None, {"x": digits.test_x})[0], digits.test_y)
    assert _top1(model(digits.test_x), digits.test_y) >= fp32 - 0.005


def test_set_local_op_type_keeps_both_convs_float(digits: DigitsSplit, tmp_path: Path) -> None:
    model = _conv_float(digits)
    names = _heavy_names(model)
    by_module = {d.module: d for d in model.decisions() if d.op_type in HEAVY}
    assert {m: d.quantized for m, d in by_module.items()} == {"conv1": False, "conv2": False, "fc1": True, "fc2": True}
    assert by_module["conv1"].reason == by_module["conv2"].reason == "set_local('Conv') -> fp32 (fallback)"

    out = model.save(tmp_path / "conv_float")
    for module in ("conv1", "conv2"):
        assert not any(_fed_by_dq(out, names[module])), f"{module} is fed by a DequantizeLinear"
    for module in ("fc1", "fc2"):
        assert all(_fed_by_dq(out, names[module])), module
    report = verify_onnx_qdq(out, {"x": digits.test_x[:64]})
    assert report.ok and report.coverage == 1.0
    assert report.kernels == {"QGemm": 2}
    assert report.unmatched_kernels == []
    # both convs really run in float in ORT (conv1 fused with its Relu into the float FusedConv)
    kernels = _ort_kernels(out, tmp_path)
    assert kernels[names["conv1"]] in ("Conv", "FusedConv") and kernels[names["conv2"]] in ("Conv", "FusedConv")


def test_set_local_name_beats_type(digits: DigitsSplit, tmp_path: Path) -> None:
    model = _name_beats_type(digits)
    names = _heavy_names(model)
    by_module = {d.module: d for d in model.decisions() if d.op_type in HEAVY}
    assert {m: d.quantized for m, d in by_module.items()} == {"conv1": True, "conv2": False, "fc1": True, "fc2": True}
    assert by_module["conv1"].reason.startswith("set_local('conv1') -> weights int8 sym per_channel minmax")
    assert "overrides set_local('Conv')" in by_module["conv1"].reason
    assert by_module["conv2"].reason == "set_local('Conv') -> fp32 (fallback)"

    out = model.save(tmp_path / "name_beats_type")
    assert all(_fed_by_dq(out, names["conv1"]))
    assert _fed_by_dq(out, names["conv2"])[1:] == [False, False]  # float weight and bias
    manifest = json.loads((out / "quantir.json").read_text())
    assert [u["module"] for u in manifest["quantized_nodes"]] == ["conv1", "fc1", "fc2"]
    report = verify_onnx_qdq(out, {"x": digits.test_x[:64]})
    assert report.coverage == 1.0
    assert {r.module: r.actual for r in report.nodes} == {"conv1": "QLinearConv", "fc1": "QGemm", "fc2": "QGemm"}


@pytest.mark.parametrize(("build", "module"), [(_fc1_float, "fc1"), (_name_beats_type, "conv2")], ids=["fc1", "conv2"])
def test_fallback_op_runs_as_a_float_kernel_in_ort(build, module: str, digits: DigitsSplit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = build(digits)
    name = _heavy_names(model)[module]
    out = model.save(tmp_path / "artifact")
    kernels = _ort_kernels(out, tmp_path)
    report = verify_onnx_qdq(out, {"x": digits.test_x[:64]})
    assert kernels[name] in ("Conv", "FusedConv", "Gemm"), f"the fp32 fallback {module} runs as {kernels[name]}"
    assert report.unmatched_kernels == []


def test_smooth_quant_keeps_every_kernel_fused(digits: DigitsSplit, tmp_path: Path) -> None:
    """Smoothing fc2's input must not take away the quantizer after fc1's Relu, which fc1's QGemm needs."""
    cfg = StaticQuantConfig(smooth_quant=True, smooth_quant_alpha=0.95, calibration_sampling_size=256)
    prepared = prepare(str(bundled_model_path()), cfg)
    prepared.calibrate([digits.calib_x[i : i + 32] for i in range(0, 256, 32)])
    model = convert(prepared)
    report = verify_onnx_qdq(model.save(tmp_path / "sq"), {"x": digits.calib_x[:32]})
    assert report.coverage == 1.0 and report.ok, report.format()
    acc = float(np.mean(model(digits.test_x).argmax(1) == digits.test_y))
    assert acc >= 0.99
