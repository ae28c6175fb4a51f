"""`quantir demo`: the bundled real example end to end, printing what it measured.

Today (foundation stage) it imports the digits CNN, round-trips it through the textual IR, re-emits float
ONNX and checks in ONNX Runtime that held-out accuracy and logits are unchanged. Quantized targets are
added by the backends as they land.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from quantir.compiler.model_io import export_onnx, load_graph
from quantir.ir import first_difference, textio, verify
from quantir.tools.digits import bundled_model_path, load_digits_split

__all__ = ["run_demo"]


def _session(path: Path):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _median_latency_ms(sess, x: np.ndarray, repeats: int = 30) -> float:  # type: ignore[no-untyped-def]
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def run_demo(workdir: str | None = None) -> int:
    split = load_digits_split()
    model = bundled_model_path()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(workdir or tmp)
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        graph = load_graph(model)
        t_import = time.perf_counter() - t0
        verify(graph)
        with_source = sum(1 for n in graph.nodes if n.source is not None)
        print(f"model      {model.name}: {len(graph)} nodes, {len(graph.constants)} constants, "
              f"{with_source} nodes with source-module provenance (import {t_import * 1e3:.0f} ms)")  # fmt: skip

        qir = out / "digits_cnn.qir"
        t0 = time.perf_counter()
        textio.save(graph, qir)
        reparsed = textio.load(qir)
        t_text = time.perf_counter() - t0
        diff = first_difference(graph, reparsed)
        print(f"text IR    {qir.name}: {qir.stat().st_size} bytes, round trip "
              f"{'structurally equal' if diff is None else 'DIFFERS: ' + diff} ({t_text * 1e3:.0f} ms)")  # fmt: skip

        emitted = out / "digits_cnn.float.onnx"
        export_onnx(reparsed, emitted)
        ref, new = _session(model), _session(emitted)
        name = ref.get_inputs()[0].name
        logits_ref = ref.run(None, {name: split.test_x})[0]
        logits_new = new.run(None, {name: split.test_x})[0]
        acc_ref = float(np.mean(logits_ref.argmax(1) == split.test_y))
        acc_new = float(np.mean(logits_new.argmax(1) == split.test_y))
        max_diff = float(np.max(np.abs(logits_ref - logits_new)))
        print(f"float ONNX {emitted.name}: held-out top-1 {acc_new:.2%} (original {acc_ref:.2%}, "
              f"{len(split.test_y)} images), max |logit diff| {max_diff:.2e}")  # fmt: skip
        for batch in (1, 32):
            x = split.test_x[:batch]
            lat_ref, lat_new = _median_latency_ms(ref, x), _median_latency_ms(new, x)
            print(f"latency    b{batch}: original {lat_ref:.3f} ms, re-emitted {lat_new:.3f} ms (ORT, median)")
        print("targets    onnx-qdq, openvino, ipex, gaudi-fp8: not implemented yet (open issues 3-5)")
        ok = diff is None and acc_new == acc_ref and max_diff <= 1e-4
    return 0 if ok else 1
