"""Retargeting a model quantized by another tool (onnxruntime's quantize_static) to OpenVINO, with no calibration.

"1 output LSB": the digits CNN's logits are a quantized graph output in the ORT model (Gemm -> Q -> DQ -> logits,
u8), so one LSB is that output quantizer's step, `logits_scale` (the source's value, read from the file).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import openvino as ov
import pytest
from onnx import numpy_helper

from quantir.backends.openvino.verify import verify_openvino
from quantir.compiler.retarget import from_quantized, requantize, target_differences
from quantir.frontends.onnx import import_onnx
from quantir.tools.digits import load_digits_split
from quantir.tools.ort_baseline import ort_quantize_digits


@pytest.fixture(scope="module")
def ort_models(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    d = tmp_path_factory.mktemp("retarget")
    return {pc: Path(ort_quantize_digits(d / f"ort_pc{int(pc)}.onnx", per_channel=pc)) for pc in (True, False)}


def _output_lsb(path: Path) -> float:
    inits = {i.name: i for i in onnx.load(str(path)).graph.initializer}
    return float(numpy_helper.to_array(inits["logits_scale"]))


def test_ort_model_retargeted_to_openvino_matches_openvino_reading_it(ort_models: dict[bool, Path],
                                                                      tmp_path: Path) -> None:  # fmt: skip
    src = ort_models[True]
    x = load_digits_split().test_x
    graph = import_onnx(src)
    assert target_differences(graph, "openvino") == []  # per-channel symmetric s8 weights: OpenVINO's own rule
    model = from_quantized(graph, "openvino")
    art = model.save(tmp_path / "ov", backend="openvino")
    report = verify_openvino(art, {"x": x[:64]})
    assert report.coverage == 1.0 and len(report.nodes) == 4  # conv1, conv2, fc1, fc2 run _I8 kernels
    ours = report.run({"x": x})[0]
    direct = ov.Core().compile_model(ov.convert_model(os.fspath(src)), "CPU")({"x": x})[0]
    lsb = _output_lsb(src)
    diff = float(np.max(np.abs(ours - direct)))
    assert diff <= lsb, f"{diff / lsb:.2f} LSB"
    assert np.mean(ours.argmax(1) == direct.argmax(1)) == 1.0


def test_per_tensor_weights_differences_and_requantization(ort_models: dict[bool, Path], tmp_path: Path) -> None:
    graph = import_onnx(ort_models[False])
    diffs = target_differences(graph, "openvino")
    assert len(diffs) == 4 and all("is per tensor" in d for d in diffs)
    changes = requantize(graph, "openvino")
    assert len(changes) == 8 and target_differences(graph, "openvino") == []
    art = from_quantized(graph, "openvino").save(tmp_path / "ov", backend="openvino")
    report = verify_openvino(art, {"x": load_digits_split().test_x[:64]})
    assert report.coverage == 1.0


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "quantir.tools.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "QUANTIR_TRACEBACK": "0"}, timeout=300)  # fmt: skip


def test_cli_retargets_without_calib(ort_models: dict[bool, Path], tmp_path: Path) -> None:
    out = tmp_path / "a"
    r = _cli("convert", str(ort_models[False]), "--to", "openvino", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "is per tensor" in r.stdout and "--requantize-weights" in r.stdout
    assert (out / "model.xml").exists() and "100%" in r.stdout
    out2 = tmp_path / "b"
    r = _cli("convert", str(ort_models[False]), "--to", "openvino", "-o", str(out2), "--requantize-weights")
    assert r.returncode == 0, r.stderr
    assert "requantized %conv1.weight: i8 sym per_tensor" in r.stdout and (out2 / "model.xml").exists()


def test_cli_refuses_inconsistent_qdq(ort_models: dict[bool, Path], tmp_path: Path) -> None:
    proto = onnx.load(str(ort_models[True]))
    dq = next(
        n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "relu_QuantizeLinear_Output"
    )
    bad_scale = numpy_helper.from_array(np.array(0.5, np.float32), "bad_scale")
    proto.graph.initializer.append(bad_scale)
    dq.input[1] = "bad_scale"
    src = tmp_path / "bad.onnx"
    onnx.save(proto, str(src))
    out = tmp_path / "out"
    r = _cli("convert", str(src), "--to", "openvino", "-o", str(out))
    assert r.returncode == 2
    assert "inconsistent quantization parameters" in r.stderr and "differ in scale" in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()
