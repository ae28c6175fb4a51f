"""Issue 4 acceptance on the bundled digits CNN with real OpenVINO and ONNX Runtime: the openvino artifact runs every
quantized Conv/Gemm as an `_I8` kernel on the CPU plugin, keeps held-out top-1 within 0.5 pt of FP32, agrees with
the IR's fake-quant reference (ORT), stores no f16 weights, carries provenance in rt_info, and writes atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import openvino as ov
import pytest

from quantir.backends.openvino import verify_openvino
from quantir.backends.openvino.emit import ov_pattern_counts, provenance
from quantir.compiler.api import convert, prepare
from quantir.compiler.config.quant_config import StaticQuantConfig
from quantir.compiler.quantized_model import QuantizedModel
from quantir.ir import SerializationError
from quantir.tools.digits import DigitsSplit, bundled_model_path, load_digits_split

MODEL = bundled_model_path()


@pytest.fixture(scope="module")
def digits() -> DigitsSplit:
    return load_digits_split()


def _quantize(digits: DigitsSplit, backend: str) -> QuantizedModel:
    prepared = prepare(str(MODEL), StaticQuantConfig(), backend=backend)
    return convert(prepared.calibrate(digits.calib_x, sampling_size=len(digits.calib_x)))


@pytest.fixture(scope="module", params=["openvino", "onnx_qdq"])
def artifact(request: pytest.FixtureRequest, digits: DigitsSplit, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepared for OpenVINO, and prepared for onnx_qdq but saved to openvino (explicit scales retarget exactly)."""
    model = _quantize(digits, request.param)
    out = tmp_path_factory.mktemp(f"ov-{request.param}") / "int8"
    assert model.save(out, backend="openvino") == out.absolute()
    assert sorted(p.name for p in out.iterdir()) == ["model.bin", "model.qdq.onnx", "model.xml", "quantir.json"]
    return out


def _top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(axis=1) == labels))


def test_every_quantized_conv_and_gemm_runs_i8(artifact: Path, digits: DigitsSplit) -> None:
    report = verify_openvino(artifact, {"x": digits.test_x})
    print(f"\nOpenVINO int8 coverage: {report.coverage_text()}\n{report.format()}")
    assert [r.op_type for r in report.nodes] == ["Conv", "Conv", "Gemm", "Gemm"]
    assert report.coverage == 1.0, report.format()
    assert all(r.actual in ("Convolution", "FullyConnected") and r.precision == "u8" for r in report.nodes)
    assert report.ok


def test_accuracy_within_half_a_point_of_fp32(artifact: Path, digits: DigitsSplit) -> None:
    fp32 = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"]).run(None, {"x": digits.test_x})[0]
    int8 = verify_openvino(artifact, {"x": digits.test_x[:8]}).run({"x": digits.test_x})[0]
    base, quant = _top1(fp32, digits.test_y), _top1(int8, digits.test_y)
    print(f"\nheld-out top-1: FP32 {base:.2%}, OpenVINO int8 {quant:.2%}")
    assert base == pytest.approx(0.995, abs=0.003)
    assert quant >= base - 0.005


def test_openvino_agrees_with_the_ir_reference(artifact: Path, digits: DigitsSplit) -> None:
    """The logits are float (fc2 has no output quantizer), so agreement is relative: LPT requantizes inside the int8
    kernels with its own rounding, and a one-step difference of an intermediate u8 activation moves a logit by
    about one fc2 weight step x activation scale; 2% of the largest logit bounds that, and argmax must agree."""
    report = verify_openvino(artifact, {"x": digits.test_x})
    (row,) = report.outputs
    print(f"\nOpenVINO vs ORT fake-quant reference: max |diff| {row.max_abs:.4g}, relative {row.rel:.4g}")
    assert row.ok and row.rel <= 2e-2
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(str(artifact / "model.qdq.onnx"), so).run(None, {"x": digits.test_x})[0]
    ov_logits = report.run({"x": digits.test_x})[0]
    assert np.mean(ref.argmax(1) == ov_logits.argmax(1)) >= 0.995


def test_no_f16_weights_and_int8_patterns(artifact: Path) -> None:
    model = ov.Core().read_model(str(artifact / "model.xml"))
    counts = ov_pattern_counts(model)
    assert counts.get("f16_constants", 0) == 0
    assert counts["int8_constants"] == 4  # conv1, conv2, fc1, fc2 weights as i8 Constant -> Convert -> Multiply
    assert counts["FakeQuantize"] >= 4
    for op in model.get_ordered_ops():
        if op.get_type_name() == "FakeQuantize":
            assert op.get_attributes()["levels"] == 256
    doc = json.loads((artifact / "quantir.json").read_text())
    patterns = doc["openvino"]["patterns"]
    assert doc["backend"] == "openvino" and {k: patterns[k] for k in counts} == counts
    assert patterns["expected_int8_constants"] == 4 and "frontend_note" not in patterns  # one FQ per activation


def test_rt_info_carries_provenance(artifact: Path) -> None:
    model = ov.Core().read_model(str(artifact / "model.xml"))
    tags = provenance(model)
    names = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
    assert tags and set(tags) <= set(names)
    heavy = {t.split(":")[1] for f, t in tags.items() if names[f].get_type_name() in ("Convolution", "MatMul")}
    assert heavy == {"conv1", "conv2", "fc1", "fc2"}
    doc = json.loads((artifact / "quantir.json").read_text())
    assert model.get_rt_info(["quantir", "ir_sha256"]).astype(str) == doc["ir_sha256"]


def test_unwritable_path_leaves_nothing_behind(digits: DigitsSplit, tmp_path: Path) -> None:
    """A destination under a regular file cannot be created (unwritable even for root): SerializationError."""
    model = _quantize(digits, "openvino")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SerializationError):
        model.save(blocker / "int8", backend="openvino")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
