"""FP8 (e4m3) digits CNN through ONNX Runtime (float8 Q/DQ) and OpenVINO (FakeConvert) on the CPU: both emulate."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from quantir.backends.onnx_proto.emulation import EmulatedVerifyReport
from quantir.backends.onnx_proto.runtime import ort_session
from quantir.backends.onnx_qdq.verify import load_onnx, verify_onnx_qdq
from quantir.compiler.api import quantize
from quantir.compiler.config.quant_config import StaticQuantConfig
from quantir.ir import DType, Granularity, QuantType, Scheme
from quantir.ir.quant_math import quantize as quantize_codes
from quantir.tools.digits import bundled_model_path, load_digits_split

F8 = onnx.TensorProto.FLOAT8E4M3FN


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    return load_digits_split()


@pytest.fixture(scope="module")
def fp8_model(digits):  # type: ignore[no-untyped-def]
    cfg = StaticQuantConfig(act_dtype="fp8_e4m3", w_dtype="fp8_e4m3", act_sym=True)
    return quantize(str(bundled_model_path()), cfg, digits.calib_x[:64])


@pytest.fixture(scope="module")
def float_accuracy(digits) -> float:  # type: ignore[no-untyped-def]
    return _accuracy(load_onnx(bundled_model_path()), digits)


def _accuracy(runner, digits) -> float:  # type: ignore[no-untyped-def]
    logits = runner({"x": digits.test_x})[0]
    return float(np.mean(np.argmax(logits, axis=1) == digits.test_y))


def _weights(model) -> dict[str, tuple[np.ndarray, QuantType]]:  # type: ignore[no-untyped-def]
    return {n: (v.const.numpy(), v.quant) for n, v in model.ir.constants.items() if isinstance(v.quant, QuantType)}


def test_onnx_qdq_fp8_artifact(fp8_model, digits, float_accuracy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    report = fp8_model.legalized("onnx_qdq").report
    assert [d.quantized for d in report.nodes if d.op_type in ("Conv", "Gemm")] == [True] * 4
    assert all(d.reason.startswith("emulated") for d in report.nodes if d.op_type in ("Conv", "Gemm"))
    assert {d.value for d in report.removed} == {"relu_1", "max_pool2d"}
    assert all("no FP8 Conv/MatMul/Gemm reads it" in d.reason for d in report.removed)

    out = fp8_model.save(tmp_path / "ort", backend="onnx_qdq")
    proto = onnx.load(str(out / "model.onnx"))
    inits = {t.name: t for t in proto.graph.initializer}
    assert proto.opset_import[0].version >= 19
    ops = Counter(n.op_type for n in proto.graph.node)
    assert (ops["QuantizeLinear"], ops["DequantizeLinear"]) == (4, 8)  # x, relu, view, relu_2; + 4 weights
    for n in proto.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert inits[n.input[2]].data_type == F8
        if n.op_type == "QuantizeLinear":
            assert onnx.helper.get_attribute_value(n.attribute[0]) == 1  # saturate
    # weights: float8 initializers, bit-equal to quant_math, and to ORT's own QuantizeLinear of the float weight
    for name, (w, q) in _weights(fp8_model).items():
        stored = inits[f"{name}_quantized"]
        assert stored.data_type == F8
        codes = np.frombuffer(stored.raw_data, np.uint8).reshape(w.shape)
        np.testing.assert_array_equal(codes, quantize_codes(w, q))
        assert _ort_codes(w, q, tmp_path / f"{name}.onnx").tobytes() == codes.tobytes()

    result = verify_onnx_qdq(out, {"x": digits.test_x})
    assert isinstance(result, EmulatedVerifyReport) and result.ok, result.format()
    assert result.coverage_text().startswith("emulated (4/4")
    assert result.kernels == {} and all(r.actual.startswith("emulated") and not r.int8 for r in result.nodes)
    assert any("no FP8 kernels on CPU" in n for n in result.notes)
    assert any("bit for bit on 4 activations" in n for n in result.notes)  # ORT's float8 rounding = quant_math's
    assert result.outputs[0].rel is not None and result.outputs[0].rel < 0.02
    assert _accuracy(result.runner, digits) >= float_accuracy - 0.005


def _ort_codes(w: np.ndarray, q: QuantType, path: Path) -> np.ndarray:
    """ORT's QuantizeLinear(float8e4m3fn, saturate=1) of `w` with `q`'s scales."""
    h, axis = onnx.helper, q.granularity.axis
    zp = h.make_tensor("zp", F8, list(q.scale.shape), np.zeros(q.scale.size, np.uint8).tobytes(), raw=True)
    node = h.make_node("QuantizeLinear", ["w", "s", "zp"], ["q"], saturate=1, **({} if axis is None else {"axis": 0}))
    graph = h.make_graph([node], "q", [h.make_tensor_value_info("w", onnx.TensorProto.FLOAT, list(w.shape))],
                         [h.make_tensor_value_info("q", F8, list(w.shape))],
                         [onnx.numpy_helper.from_array(q.scale.astype(np.float32), "s"), zp])  # fmt: skip
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 19)]), str(path))
    return np.asarray(ort_session(path, level="none").run(["q"], {"w": w})[0]).view(np.uint8)


def test_onnx_qdq_fp8_per_tensor_weights(digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = StaticQuantConfig(act_dtype="fp8_e4m3", w_dtype="fp8_e4m3", act_sym=True, w_granularity="per_tensor")
    model = quantize(str(bundled_model_path()), cfg, digits.calib_x[:32])
    out = model.save(tmp_path / "ort", backend="onnx_qdq")
    proto = onnx.load(str(out / "model.onnx"))
    weight_dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and "weight" in n.name]
    assert len(weight_dq) == 4 and all(not n.attribute for n in weight_dq)  # per tensor: no axis
    assert verify_onnx_qdq(out, {"x": digits.test_x[:128]}).ok


def test_openvino_fp8_artifact(fp8_model, digits, float_accuracy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("openvino")
    from quantir.backends.openvino.verify import verify_openvino

    out = fp8_model.save(tmp_path / "ov", backend="openvino")
    import json

    patterns = json.loads((out / "quantir.json").read_text())["openvino"]["patterns"]
    assert patterns["FakeConvert"] == 4 and patterns["f8_constants"] >= 4 and "FakeQuantize" not in patterns
    result = verify_openvino(out, {"x": digits.test_x})
    assert isinstance(result, EmulatedVerifyReport) and result.ok, result.format()
    assert result.coverage_text().startswith("emulated (4/4")
    assert all(r.actual.startswith("emulated") and r.precision == "f32" for r in result.nodes)
    assert any("no FP8 kernels" in n for n in result.notes)
    assert _accuracy(result.runner, digits) >= float_accuracy - 0.005


def test_openvino_fakeconvert_rounds_through_f16(fp8_model, digits) -> None:  # type: ignore[no-untyped-def]
    """OpenVINO's CPU FakeConvert is f32 -> f16 -> f8: exactly quant_math's codes of the f16-rounded x·(1/s), which
    are one step off round-to-nearest-even of x/s wherever that rounding lands on an f8 tie (the digits input)."""
    ov = pytest.importorskip("openvino")
    import openvino.opset13 as ops

    x = np.asarray(digits.calib_x[:64], np.float32).reshape(-1)
    q = fp8_model.ir.inputs[0].quant
    assert isinstance(q, QuantType) and q.dtype is DType.F8E4M3FN
    p = ops.parameter([x.size], ov.Type.f32)
    fc = ops.fake_convert(p, np.array(np.float32(1) / q.scale.reshape(()), np.float32), destination_type="f8e4m3")
    y = ov.Core().compile_model(ov.Model([fc], [p]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({0: x})[0]
    unit = QuantType(DType.F8E4M3FN, Scheme.SYM, Granularity.per_tensor(), np.float32(1), 0.0, 0, 0)
    scaled = x * (np.float32(1) / q.scale.reshape(()))
    got = quantize_codes(y * (np.float32(1) / q.scale.reshape(())), unit)
    np.testing.assert_array_equal(got, quantize_codes(scaled.astype(np.float16).astype(np.float32), unit))
    ref = quantize_codes(x, q)  # digits pixels are >= 0: codes are ordered by value
    off = got != ref
    assert np.all(np.abs(got.astype(np.int64) - ref.astype(np.int64)) <= 1)  # one step at most
    assert 0 < np.mean(off) < 0.1  # measured 8.3%: the pixels are k/16, so one f16 tie flips every equal pixel
