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
from quantir.tools.dev.ort_baseline import ort_quantize_digits
from quantir.tools.digits import load_digits_split


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


def _narrowed_activation_model(path: Path) -> Path:
    """x -> Q(u8) -> Clip(max 127) -> DQ -> Conv(int8 weight DQ) -> Q -> DQ: the activation's narrowed range is
    something the IR keeps as ops (torch.onnx's fake quant with range [0, 127] exports this)."""
    from onnx import TensorProto, helper

    w = np.random.default_rng(0).integers(-127, 127, (4, 3, 3, 3)).astype(np.int8)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="x_Q"),
             helper.make_node("Clip", ["xq", "", "hi"], ["xc"], name="x_Clip"),
             helper.make_node("DequantizeLinear", ["xc", "s", "z"], ["xd"], name="x_DQ"),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0, name="w_DQ"),
             helper.make_node("Conv", ["xd", "wd"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["c", "s2", "z"], ["cq"], name="c_Q"),
             helper.make_node("DequantizeLinear", ["cq", "s2", "z"], ["y"], name="c_DQ")]  # fmt: skip
    arrays = {
        "s": np.array(0.05, np.float32),
        "z": np.array(0, np.uint8),
        "hi": np.array(127, np.uint8),
        "w": w,
        "ws": np.full(4, 0.01, np.float32),
        "wz": np.zeros(4, np.int8),
        "s2": np.array(0.1, np.float32),
    }
    inits = [numpy_helper.from_array(a, n) for n, a in arrays.items()]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), os.fspath(path))
    return path


def test_q_dq_kept_as_ops_convert_to_openvino_and_say_why(tmp_path: Path) -> None:
    """The kept Q/DQ ops become FakeQuantizes of their own in OpenVINO (not a pattern failure), the CLI says why
    they were kept, and it offers no --requantize-weights that would change nothing."""
    model = _narrowed_activation_model(tmp_path / "narrowed.onnx")
    r = _cli("convert", str(model), "--to", "openvino", "-o", str(tmp_path / "ov"))
    assert r.returncode == 0, r.stderr
    assert "kept as an op (its value stays float): Clip node 'x_Clip': narrows the quantized range of %x" in r.stdout
    assert "Conv node 'conv': quantized in the source, float on OpenVINO" in r.stdout
    assert "--requantize-weights" not in r.stdout
    compiled = ov.Core().compile_model(os.fspath(tmp_path / "ov" / "model.xml"), "CPU")
    x = np.random.default_rng(1).uniform(0, 8, (1, 3, 8, 8)).astype(np.float32)
    from quantir.backends.onnx_proto import ort_session

    expected = ort_session(model, level="none").run(None, {"x": x})[0]
    got = np.asarray(compiled({"x": x})[compiled.outputs[0]])
    assert np.max(np.abs(got - expected)) <= 0.1 + 1e-6  # the output's own step: one LSB at most
