"""`quantir demo`: the bundled real example end to end, printing what it measured.

The digits CNN (trained on scikit-learn's real 8x8 digit scans) goes through the IR (with an exact text round
trip) and is quantized to int8 once, with 256 calibration images. The one quantized model is then saved for every
registered backend (ONNX QDQ for ONNX Runtime, OpenVINO IR, ...): for each, the runtime's own verification (which
quantized ops really run low-precision kernels), held-out accuracy on the 597 test images and latency against the
float model in the same runtime. Two runtimes' outputs on the same IR are compared in output LSB
(`quantir.tools.crossrt`), and the torch path (nn.Module in, int8 out) is run too.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from quantir.backends.contract import Runner
from quantir.backends.registry import DEFAULT_BACKEND, backend_names, get_backend
from quantir.compiler.api import convert, prepare
from quantir.compiler.config.quant_config import FP8Config, StaticQuantConfig
from quantir.compiler.model_io import load_graph
from quantir.ir import QuantirError, first_difference, textio
from quantir.tools.convert import verify_fresh
from quantir.tools.digits import bundled_model_path, load_digits_split

__all__ = ["run_demo"]


def _median_latency_ms(run: Runner, x: np.ndarray, repeats: int = 50) -> float:
    feed = {run.input_names[0]: x}
    run(feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(feed)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def _top1(run: Runner, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(run({run.input_names[0]: x})[0].argmax(1) == y))


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


def _backend_path(quantized: Any, name: str, split: Any, out: Path, model: Path,
                  precision: str = "int8") -> float | None:  # fmt: skip
    """Save the quantized model for backend `name`; print its verification, accuracy and latency against the float
    model in the same runtime. Returns the quantized held-out top-1 minus FP32's (0 where the runtime has no float
    model), or None when the runtime is missing."""
    backend = get_backend(name)
    label = name[:11].ljust(11)
    t0 = time.perf_counter()
    try:
        artifact = quantized.save(out / ("all" if precision == "int8" else precision) / name, backend=name)
    except ImportError as e:
        print(f"{label} {backend.runtime} is not installed ({e}): skipped")
        return None
    print(f"{label} saved in {time.perf_counter() - t0:.2f} s -> {artifact}")
    report = verify_fresh(name, artifact, {"x": split.calib_x[:32]})
    print(f"{label} {backend.runtime}: {report.summary_line()}")
    int8 = backend.load(artifact, threads=1)
    acc_q = _top1(int8, split.test_x, split.test_y)
    if backend.load_float is None:
        print(f"{label} held-out top-1 on {len(split.test_y)} images: {precision} {acc_q:.2%}")
        return 0.0
    fp32 = backend.load_float(model, threads=1)
    acc_f = _top1(fp32, split.test_x, split.test_y)
    print(f"{label} held-out top-1 on {len(split.test_y)} images: FP32 {acc_f:.2%}, int8 {acc_q:.2%} "
          f"({(acc_q - acc_f) * 100:+.2f} pt)")  # fmt: skip
    for batch in (1, 32):
        x = split.test_x[:batch]
        lf, lq = _median_latency_ms(fp32, x), _median_latency_ms(int8, x)
        print(
            f"{label} latency b{batch}: FP32 {lf:.3f} ms, int8 {lq:.3f} ms ({lq / lf:.2f}x; {backend.runtime}, "
            "1 thread, median)"
        )
    return acc_q - acc_f


def _cross_runtime(out: Path, split: Any) -> None:
    from quantir.tools.crossrt import cross_runtime_all

    try:
        reports = cross_runtime_all(out / "all", {"x": split.calib_x})
    except QuantirError as e:
        print(f"cross       not compared: {e}")
        return
    for cross, row in ((c, r) for c in reports for r in c.rows):
        lsb = "-" if row.lsb is None else f"{row.lsb:.2f}"
        arg = "" if row.argmax is None else f", argmax agreement {row.argmax:.2%}"
        step = "-" if row.step is None else f"{row.step:.4g}"
        print(f"cross       {cross.runtime_a} vs {cross.runtime_b}, {row.name} on {cross.samples} calibration images: "
              f"max |diff| {row.max_abs:.4g} = {lsb} LSB (step {step}, {row.step_kind}){arg}")  # fmt: skip


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
        prepared = prepare(model, StaticQuantConfig(), backend=DEFAULT_BACKEND)
        for i in range(0, len(split.calib_x), 32):
            prepared(split.calib_x[i : i + 32])  # calling the prepared model calibrates (INC style)
        quantized = convert(prepared)
        seconds = time.perf_counter() - t0
        print(f"convert     int8 in {seconds:.2f} s with {len(split.calib_x)} calibration images")
        (out / "all").mkdir(exist_ok=True)
        int8 = [n for n in backend_names() if not get_backend(n).fp8_only]
        drops = [_backend_path(quantized, name, split, out, model) for name in int8]
        _cross_runtime(out, split)
        fp8 = [n for n in backend_names() if get_backend(n).fp8_only]
        if fp8:
            t0 = time.perf_counter()
            (out / "fp8").mkdir(exist_ok=True)
            prepared = prepare(model, FP8Config(), backend=fp8[0])
            prepared.calibrate(split.calib_x, progress=False)
            fp8_model = convert(prepared)
            print(f"convert     FP8 (FP8Config: E4M3, maxabs_hw, Gaudi2 scales) in {time.perf_counter() - t0:.2f} s")
            drops += [_backend_path(fp8_model, name, split, out, model, precision="fp8") for name in fp8]
        fp32 = get_backend(DEFAULT_BACKEND).load_float
        assert fp32 is not None
        acc_f = _top1(fp32(model), split.test_x, split.test_y)
        acc_t = _torch_path(split, out)
        ok = diff is None and all(d is None or d >= -0.005 for d in drops)  # the LSB figure is reported, not gated
        ok = ok and (acc_t is None or acc_t >= acc_f - 0.005)
    return 0 if ok else 1
