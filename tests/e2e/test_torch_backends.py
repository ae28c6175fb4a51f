"""Issue 12: the torch backends on the real digits CNN. `pt2e` is a torch.export program with PT2E Q/DQ that
torch.compile (Inductor, freezing) really runs as oneDNN int8 kernels (read from the generated code); `ipex` is a
frozen TorchScript model with IPEX's quantize/dequantize pattern on every Conv/Linear plus IPEX's qconf JSON.
Both agree with the IR's fake-quant reference and with the ONNX Runtime and OpenVINO artifacts of the same IR."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from quantir.backends.ipex.emit import conv_linear_nodes
from quantir.backends.ipex.qconf_summary import check_qconf
from quantir.backends.ipex.verify import load as load_ipex
from quantir.backends.ipex.verify import load_script, verify_ipex
from quantir.backends.pt2e.verify import load as load_pt2e
from quantir.backends.pt2e.verify import load_program, program_units, verify_pt2e
from quantir.compiler.api import convert, prepare, quantize
from quantir.compiler.config.quant_config import StaticQuantConfig
from quantir.compiler.quantized_model import QuantizedModel
from quantir.ir import FrontendError, SerializationError
from quantir.tools.crossrt import cross_runtime
from quantir.tools.dev.train_digits import load_bundled_module
from quantir.tools.digits import DigitsSplit, bundled_model_path, load_digits_split

MODULES = ("conv1", "conv2", "fc1", "fc2")
FP32 = StaticQuantConfig(w_dtype="fp32", act_dtype="fp32")


@pytest.fixture(scope="module")
def digits() -> DigitsSplit:
    return load_digits_split()


def _quantize(cfg: StaticQuantConfig, digits: DigitsSplit, backend: str) -> QuantizedModel:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare(load_bundled_module(), cfg, example_inputs=(torch.zeros(8, 1, 8, 8),), backend=backend)
    for batch in torch.from_numpy(digits.calib_x).split(32):
        prepared(batch)
    return convert(prepared)


@pytest.fixture(scope="module")
def artifacts(digits: DigitsSplit, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One QuantizedModel (prepared for pt2e) saved for every backend: one IR, four artifacts."""
    q = _quantize(StaticQuantConfig(), digits, "pt2e")
    root = tmp_path_factory.mktemp("torch_backends")
    return {b: q.save(root / b, backend=b) for b in ("pt2e", "ipex", "onnx_qdq", "openvino")}


def _fp32_top1(digits: DigitsSplit) -> float:
    with torch.no_grad():
        logits = load_bundled_module()(torch.from_numpy(digits.test_x))
    return float((logits.argmax(1).numpy() == digits.test_y).mean())


def _top1(runner: object, digits: DigitsSplit) -> float:
    out = runner({"x": digits.test_x})[0]  # type: ignore[operator]
    return float((out.argmax(1) == digits.test_y).mean())


def test_pt2e_compiles_to_onednn_int8_on_every_conv_and_linear(artifacts: dict[str, Path], digits: DigitsSplit) -> None:
    report = verify_pt2e(artifacts["pt2e"], {"x": digits.calib_x[:32]})
    print("\n" + report.format())
    assert report.coverage == 1.0 and len(report.heavy) == 4
    assert report.kernels == {"onednn.qconv_pointwise": 2, "onednn.qlinear_pointwise": 2}
    assert not report.leftover, f"float conv/matmul kernels left in the compiled code: {report.leftover}"
    assert report.ok, report.format()
    program, _ = load_program(artifacts["pt2e"])
    units = program_units(program)
    assert [u["module"] for u in units] == list(MODULES)
    assert all(u["activation_int8"] and u["weight_int8"] for u in units)


def test_ipex_frozen_graph_has_the_int8_pattern_on_every_conv_and_linear(
    artifacts: dict[str, Path], digits: DigitsSplit
) -> None:
    report = verify_ipex(artifacts["ipex"], {"x": digits.calib_x[:32]})
    print("\n" + report.format())
    assert report.coverage == 1.0 and len(report.heavy) == 4 and report.ok
    script, manifest = load_script(artifacts["ipex"])
    assert conv_linear_nodes(script.graph) == [("Conv", True), ("Conv", True), ("Gemm", True), ("Gemm", True)]
    assert [u["module"] for u in manifest["quantized_nodes"]] == list(MODULES)
    kinds = [n.kind() for n in script.graph.nodes()]
    assert kinds.count("aten::quantize_per_channel") == 0, "freezing folds the weight quantize into QInt8 constants"
    qconf = json.loads((artifacts["ipex"] / "qconf.json").read_text())
    names = [n for n, _ in load_bundled_module().named_modules()]
    assert check_qconf(qconf, names) == []


@pytest.mark.parametrize("backend", ["pt2e", "ipex"])
def test_digits_accuracy_within_half_a_point_of_fp32(
    backend: str, artifacts: dict[str, Path], digits: DigitsSplit
) -> None:
    runner = load_pt2e(artifacts[backend], compile=False) if backend == "pt2e" else load_ipex(artifacts[backend])
    int8, fp32 = _top1(runner, digits), _fp32_top1(digits)
    print(f"\n{backend}: held-out top-1 FP32 {fp32:.4f}, int8 {int8:.4f}")
    assert int8 >= fp32 - 0.005


def test_torch_artifacts_agree_with_ort_and_openvino_within_one_lsb(
    artifacts: dict[str, Path], digits: DigitsSplit, tmp_path: Path
) -> None:
    """Pairs of artifacts of one IR, each in its own runtime (pt2e compiled with Inductor: int8 kernels)."""
    for a, b in (("onnx_qdq", "pt2e"), ("openvino", "pt2e"), ("onnx_qdq", "ipex"), ("openvino", "ipex")):
        pair = tmp_path / f"{a}-{b}"
        pair.mkdir()
        for name in (a, b):
            shutil.copytree(artifacts[name], pair / name)
        report = cross_runtime(pair, {"x": digits.calib_x})
        for row in report.rows:
            print(f"\n{report.runtime_a} vs {report.runtime_b}: {row.name} max |diff| {row.max_abs:.3g} = "
                  f"{row.lsb} LSB ({row.step_kind}), argmax agreement {row.argmax}")  # fmt: skip
            assert row.lsb is not None and row.lsb <= 1.0
            assert row.argmax is not None and row.argmax >= 0.99


@pytest.mark.parametrize("fallback", ["fc1", torch.nn.Linear])
def test_set_local_fallbacks_are_exact_in_both_artifacts(fallback: object, digits: DigitsSplit, tmp_path: Path) -> None:
    cfg = StaticQuantConfig()
    cfg.set_local(fallback, FP32)  # type: ignore[arg-type]
    q = _quantize(cfg, digits, "pt2e")
    floats = {"fc1"} if fallback == "fc1" else {"fc1", "fc2"}
    program, _ = load_program(q.save(tmp_path / "pt2e", backend="pt2e"))
    units = {u["module"]: u["weight_int8"] and u["activation_int8"] for u in program_units(program)}
    assert units == {m: m not in floats for m in MODULES}
    ipex = q.save(tmp_path / "ipex", backend="ipex")
    script, _ = load_script(ipex)
    assert [int8 for _, int8 in conv_linear_nodes(script.graph)] == [m not in floats for m in MODULES]
    qconf = json.loads((ipex / "qconf.json").read_text())
    ops = list(qconf[" "]["q_op_infos"].values())
    forced = {op["fqn"]: op["input_tensor_infos"][0]["force_dtype"] for op in ops if op["fqn"] in MODULES}
    assert forced == {m: "torch.float32" if m in floats else "torch.quint8" for m in MODULES}


_RELOAD = """
import sys, numpy as np
from quantir.backends.registry import get_backend
backend, artifact, x, out = sys.argv[1:]
kwargs = {"compile": False} if backend == "pt2e" else {}
runner = get_backend(backend).load(artifact, **kwargs)
np.save(out, runner({"x": np.load(x)})[0])
"""


@pytest.mark.parametrize("backend", ["pt2e", "ipex"])
def test_artifacts_reload_in_a_fresh_process_bit_identical(
    backend: str, artifacts: dict[str, Path], digits: DigitsSplit, tmp_path: Path
) -> None:
    x = digits.test_x[:64]
    np.save(tmp_path / "x.npy", x)
    args = [os.fspath(artifacts[backend]), os.fspath(tmp_path / "x.npy"), os.fspath(tmp_path / "y.npy")]
    subprocess.run([sys.executable, "-c", _RELOAD, backend, *args], check=True, capture_output=True)
    here = load_pt2e(artifacts[backend], compile=False) if backend == "pt2e" else load_ipex(artifacts[backend])
    assert np.load(tmp_path / "y.npy").tobytes() == here({"x": x})[0].tobytes()


def test_batch_one_and_other_batches_run(artifacts: dict[str, Path], digits: DigitsSplit) -> None:
    for runner in (load_pt2e(artifacts["pt2e"], compile=False), load_ipex(artifacts["ipex"])):
        for n in (1, 5, 64):
            assert runner({"x": digits.test_x[:n]})[0].shape == (n, 10)


def test_onnx_sourced_model_converts_to_the_torch_backends(digits: DigitsSplit, tmp_path: Path) -> None:
    q = quantize(os.fspath(bundled_model_path()), StaticQuantConfig(), calib_data=digits.calib_x)
    for backend in ("pt2e", "ipex"):
        runner = (load_pt2e(q.save(tmp_path / backend, backend=backend), compile=False) if backend == "pt2e"
                  else load_ipex(q.save(tmp_path / backend, backend=backend)))  # fmt: skip
        assert _top1(runner, digits) >= _fp32_top1(digits) - 0.005


def test_an_op_without_an_aten_mapping_is_a_clear_error(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    w = onnx.numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    axis = onnx.numpy_helper.from_array(np.array(1, dtype=np.int64), "axis")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                               helper.make_node("CumSum", ["h", "axis"], ["y"], name="running_total")],
                              "cumsum", [x], [y], [w, axis])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "cumsum.onnx"
    onnx.save(model, path)
    rng = np.random.default_rng(0)
    q = quantize(os.fspath(path), StaticQuantConfig(), calib_data=rng.standard_normal((16, 4)).astype(np.float32))
    for backend in ("ipex", "pt2e"):
        with pytest.raises(SerializationError, match=r"CumSum.*running_total|running_total.*CumSum") as e:
            q.save(tmp_path / backend, backend=backend)
        assert "no aten mapping" in str(e.value)
        assert not (tmp_path / backend).exists(), "no half-written artifact"


def test_a_module_that_does_not_export_is_a_clear_error() -> None:
    class DataDependent(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if x.sum() > 0 else x

    with pytest.raises(FrontendError, match="data-dependent"):
        prepare(DataDependent(), StaticQuantConfig(), example_inputs=(torch.ones(2, 3),), backend="pt2e")


def test_quantized_model_for_a_torch_backend_returns_torch_tensors(digits: DigitsSplit) -> None:
    q = _quantize(StaticQuantConfig(), digits, "ipex")
    out = q(torch.from_numpy(digits.test_x[:16]))
    assert isinstance(out, torch.Tensor) and out.shape == (16, 10)
