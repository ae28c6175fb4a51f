"""`quantir demo`: the bundled real example end to end, printing what it measured.

The digits CNN (trained on scikit-learn's real 8x8 digit scans) goes through the IR (with an exact text round
trip), is quantized to int8 with 256 calibration images, saved as an ONNX QDQ artifact, verified to run as
fused integer kernels in ONNX Runtime, and compared with FP32 on the 597 held-out images.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from quantir.compiler.api import convert, prepare
from quantir.compiler.config import StaticQuantConfig
from quantir.compiler.model_io import load_graph
from quantir.ir import first_difference, textio
from quantir.tools.digits import bundled_model_path, load_digits_split

__all__ = ["run_demo"]


def _session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


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

        from quantir.tools.train_digits import load_bundled_module
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
        artifact = quantized.save(out / "digits_cnn.onnx_qdq")
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
        acc_t = _torch_path(split, out)
        ok = diff is None and acc_q >= acc_f - 0.005 and (acc_t is None or acc_t >= acc_f - 0.005)
    return 0 if ok else 1
