"""OpenVINO's CPU plugin runs float ops in bf16 by default on CPUs with AMX/AVX512-BF16 (this machine's Xeon), which
is not the IR's float semantics: magika's OpenVINO artifact then differed from its own fake-quant reference by 0.37
relative and agreed with FP32 on fewer files than the ONNX QDQ one (issue 17 item 6). quantir compiles with f32 float
precision, for artifacts, float baselines and the benchmark alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import openvino as ov
from onnx import TensorProto, helper, numpy_helper

from quantir.backends.openvino.verify import CPU_CONFIG, compile_cpu


def test_compile_cpu_runs_float_ops_in_f32(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (256, 256)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["y"])], "f",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 256])], [numpy_helper.from_array(w, "w")],
    )  # fmt: skip
    path = tmp_path / "f.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    runner = compile_cpu(path)
    assert runner.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    assert CPU_CONFIG["INFERENCE_PRECISION_HINT"] == "f32"
    x = rng.normal(0, 0.05, (8, 256)).astype(np.float32)
    expected = np.tanh(x.astype(np.float64) @ w.astype(np.float64))
    (got,) = runner({"x": x})
    assert float(np.max(np.abs(got - expected))) < 1e-4  # bf16 (8-bit mantissa) misses this by ~1e-2
