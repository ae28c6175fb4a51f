"""`quantir demo`: the bundled real example end to end, printing what it measured.

The digits CNN (trained on scikit-learn's real 8x8 digit scans) goes through the IR (with an exact text round
trip), is quantized to int8 with 256 calibration images, saved as an ONNX QDQ artifact, verified to run as
fused integer kernels in ONNX Runtime, and compared with FP32 on the 597 held-out images. The same quantized
model is then saved as an OpenVINO artifact: its int8 coverage on the CPU plugin, held-out accuracy and latency in
OpenVINO, and the ORT-vs-OpenVINO disagreement in output LSB (`quantir.tools.crossrt`) are printed too.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from quantir.backends.onnx_proto import ort_session
from quantir.compiler.api import convert, prepare
from quantir.compiler.config.quant_config import StaticQuantConfig
from quantir.compiler.model_io import load_graph
from quantir.ir import first_difference, textio
from quantir.tools.digits import bundled_model_path, load_digits_split

__all__ = ["run_demo"]


def _session(path: Path) -> Any:
    return ort_session(path, threads=1)


def _median_latency_ms(sess: Any, x: np.ndarray, repeats: int = 50) -> float:
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def _top1(sess: Any, x: np.ndarray, y: np.ndarray) -> float:
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return float(np.mean(logits.argmax(1) == y))


def _torch_path(split: Any, out: Path) -> float | None:
    """The same CNN as a torch nn.Module: export (module names kept) -> prepare -> calibrate -> convert."""
    try:
        import torch

        from quantir.tools.dev.train_digits import load_bundled_module
    except ImportError:
        print("torch       not installed: the torch path is skipped (pip install -c constraints.txt torch==2.13.0)")
        return None
    module = load_bundled_module()
    t0 = time.perf_counter()
    prepared = prepare(module, StaticQuantConfig(), example_inputs=(torch.from_numpy(split.calib_x[:32]),))
    for i in range(0, len(split.calib_x), 32):
        prepared(torch.from_numpy(split.calib_x[i : i + 32]))
    quantized = convert(prepared)
    quantized.save(out / "digits_torch.onnx_qdq")
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        fp32 = float((module(torch.from_numpy(split.test_x)).argmax(1).numpy() == split.test_y).mean())
    int8 = float((quantized(torch.from_numpy(split.test_x)).argmax(1).numpy() == split.test_y).mean())
    modules = sorted({d.module for d in quantized.decisions() if d.quantized and d.module})
    print(f"torch       nn.Module -> int8 in {seconds:.2f} s (export included); held-out top-1 torch FP32 {fp32:.2%}, "
          f"int8 {int8:.2%}; quantized modules: {', '.join(modules)}")  # fmt: skip
    return int8


def _ov_latency_ms(compiled: Any, x: np.ndarray, repeats: int = 50) -> float:
    request = compiled.create_infer_request()
    request.infer({"x": x})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        request.infer({"x": x})
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def _openvino_path(quantized: Any, split: Any, out: Path, model: Path, acc_f: float) -> tuple[float, float] | None:
    """Save the same QuantizedModel for OpenVINO; print coverage, accuracy, latency and ORT-vs-OV agreement.
    Returns (OpenVINO int8 top-1, worst ORT-vs-OV disagreement in LSB), or None without OpenVINO."""
    try:
        import openvino as ov

        from quantir.backends.openvino.verify import verify_openvino
    except ImportError:
        print("openvino    not installed: the OpenVINO path is skipped (pip install -c constraints.txt openvino)")
        return None
    from quantir.tools.crossrt import cross_runtime

    t0 = time.perf_counter()
    artifact = quantized.save(out / "all" / "openvino", backend="openvino")
    print(f"openvino    the same IR saved for OpenVINO in {time.perf_counter() - t0:.2f} s -> {artifact}")
    report = verify_openvino(artifact, {"x": split.calib_x[:32]})
    print(f"ov int8     coverage {report.coverage_text()} (runtimePrecision/primitiveType on the CPU plugin)")
    acc_o = float(np.mean(report.run({"x": split.test_x})[0].argmax(1) == split.test_y))
    print(f"ov accuracy held-out top-1: FP32 {acc_f:.2%}, OpenVINO int8 {acc_o:.2%} ({(acc_o - acc_f) * 100:+.2f} pt)")
    core = ov.Core()
    fp32 = core.compile_model(str(model), "CPU", {"INFERENCE_NUM_THREADS": 1})
    int8 = core.compile_model(str(artifact / "model.xml"), "CPU", {"INFERENCE_NUM_THREADS": 1})
    for batch in (1, 32):
        x = split.test_x[:batch]
        lf, lq = _ov_latency_ms(fp32, x), _ov_latency_ms(int8, x)
        print(
            f"ov latency  b{batch}: FP32 {lf:.3f} ms, int8 {lq:.3f} ms ({lq / lf:.2f}x; OpenVINO CPU, 1 thread, median)"
        )
    cross = cross_runtime(out / "all", {"x": split.calib_x})
    for row in cross.rows:
        lsb = "-" if row.lsb is None else f"{row.lsb:.2f}"
        arg = "" if row.argmax is None else f", argmax agreement {row.argmax:.2%}"
        step = "-" if row.step is None else f"{row.step:.4g}"
        print(f"ORT vs OV   {row.name} on {cross.samples} calibration images: max |diff| {row.max_abs:.4g} = {lsb} LSB "
              f"(step {step}, {row.step_kind}){arg}")  # fmt: skip
    worst = cross.max_lsb
    return acc_o, (0.0 if worst is None else worst)


def run_demo(workdir: str | None = None) -> int:
    split = load_digits_split()
    model = bundled_model_path()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(workdir or tmp)
        out.mkdir(parents=True, exist_ok=True)
        graph = load_graph(model)
        qir = out / "digits_cnn.qir"
        textio.save(graph, qir)
        diff = first_difference(graph, textio.load(qir))
        print(f"model       {model.name}: {len(graph)} nodes, {len(graph.constants)} constants; text IR round trip "
              f"{'exact' if diff is None else 'DIFFERS: ' + diff}")  # fmt: skip

        t0 = time.perf_counter()
        prepared = prepare(model, StaticQuantConfig(), backend="onnx_qdq")
        for i in range(0, len(split.calib_x), 32):
            prepared(split.calib_x[i : i + 32])  # calling the prepared model calibrates (INC style)
        quantized = convert(prepared)
        (out / "all").mkdir(exist_ok=True)
        artifact = quantized.save(out / "all" / "onnx_qdq")
        seconds = time.perf_counter() - t0
        print(f"convert     onnx-qdq in {seconds:.2f} s with {len(split.calib_x)} calibration images -> {artifact}")

        from quantir.backends.onnx_qdq.verify import verify_onnx_qdq

        report = verify_onnx_qdq(artifact, {"x": split.calib_x[:32]})
        print(f"int8        {report.summary_line()}")

        fp32, int8 = _session(model), _session(artifact / "model.onnx")
        acc_f, acc_q = _top1(fp32, split.test_x, split.test_y), _top1(int8, split.test_x, split.test_y)
        print(f"accuracy    held-out top-1 on {len(split.test_y)} images: FP32 {acc_f:.2%}, int8 {acc_q:.2%} "
              f"({(acc_q - acc_f) * 100:+.2f} pt)")  # fmt: skip
        for batch in (1, 32):
            x = split.test_x[:batch]
            lf, lq = _median_latency_ms(fp32, x), _median_latency_ms(int8, x)
            print(f"latency     b{batch}: FP32 {lf:.3f} ms, int8 {lq:.3f} ms ({lq / lf:.2f}x; ORT, 1 thread, median)")
        ov_result = _openvino_path(quantized, split, out, model, acc_f)
        acc_t = _torch_path(split, out)
        ok = diff is None and acc_q >= acc_f - 0.005 and (acc_t is None or acc_t >= acc_f - 0.005)
        ok = ok and (ov_result is None or ov_result[0] >= acc_f - 0.005)  # the LSB figure is reported, not gated
    return 0 if ok else 1
