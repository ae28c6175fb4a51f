"""`quantir convert`: quantize a model for a target and print what was decided and measured.

Prints the per-reason summary of ops quantized vs float, the int8 kernel coverage the runtime really achieved,
and the agreement of the artifact's outputs with the float model's on the calibration data.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from quantir.compiler.api import convert, prepare
from quantir.compiler.calib_data import feeds
from quantir.compiler.config import StaticQuantConfig, load_config
from quantir.compiler.quantized_model import BACKENDS, QuantizedModel
from quantir.ir import QuantirError

__all__ = ["agreement", "run_convert", "summarize"]


def summarize(model: QuantizedModel) -> str:
    rows = model.decisions()
    lines = [f"ops: {sum(d.quantized for d in rows)} quantized, {sum(not d.quantized for d in rows)} float"]
    for (quantized, reason), n in Counter((d.quantized, d.reason) for d in rows).most_common():
        lines.append(f"  {'int8 ' if quantized else 'float'}  {n:4d}  {reason}")
    return "\n".join(lines)


def agreement(float_outputs: list[np.ndarray], quant_outputs: list[np.ndarray], names: list[str]) -> list[str]:
    """Per output: max |diff|, relative L2 error, cosine, and argmax agreement for 2-D outputs."""
    lines = []
    for name, f, q in zip(names, float_outputs, quant_outputs, strict=True):
        f64, q64 = f.astype(np.float64).reshape(len(f), -1), q.astype(np.float64).reshape(len(q), -1)
        rel = float(np.linalg.norm(f64 - q64)) / max(float(np.linalg.norm(f64)), 1e-30)
        cos = float(
            np.mean(np.sum(f64 * q64, 1) / np.maximum(np.linalg.norm(f64, axis=1) * np.linalg.norm(q64, axis=1), 1e-30))
        )
        text = (
            f"  {name}: max |diff| {float(np.max(np.abs(f64 - q64))):.4g}, relative L2 {rel:.4%}, mean cosine {cos:.5f}"
        )
        if f.ndim == 2 and f.shape[1] > 1:
            text += f", argmax agreement {float(np.mean(f.argmax(1) == q.argmax(1))):.2%}"
        lines.append(text)
    return lines


def _batches(data: Any, model: QuantizedModel, size: int) -> Iterator[dict[str, np.ndarray]]:
    yield from feeds(data, model.ir, sampling_size=size)


def _float_session(source: Path) -> Any:
    """An ORT session of the float model (a .qir is emitted to a temporary file, removed once loaded)."""
    import tempfile

    import onnxruntime as ort

    from quantir.compiler.model_io import export_onnx, load_graph

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if source.suffix == ".onnx":
        return ort.InferenceSession(str(source), opts, providers=["CPUExecutionProvider"])
    with tempfile.TemporaryDirectory(prefix="quantir-float-") as tmp:
        path = Path(tmp) / "float.onnx"
        export_onnx(load_graph(source), path)
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _verify_onnx_qdq(path: Path, feed: dict[str, np.ndarray]) -> Any:
    from quantir.backends.onnx_qdq.verify import verify_onnx_qdq

    return verify_onnx_qdq(path, feed)


def _verify_openvino(path: Path, feed: dict[str, np.ndarray]) -> Any:
    from quantir.backends.openvino.verify import verify_openvino

    return verify_openvino(path, feed)


_VERIFY = {"onnx_qdq": _verify_onnx_qdq, "openvino": _verify_openvino}
"""Per target: load the artifact in its runtime; the report has `coverage_text()` and `run(batch)`."""


def run_convert(args: argparse.Namespace) -> int:
    cfg = load_config(args.config) if args.config else StaticQuantConfig()
    size = args.sampling_size or cfg.calibration_sampling_size
    key = args.to.replace("-", "_")
    if key not in (*BACKENDS, "all"):
        raise QuantirError(f"--to {args.to}: unknown target; expected onnx-qdq, openvino or all")
    targets = list(BACKENDS) if key == "all" else [key]
    t0 = time.perf_counter()
    mode = "all" if args.print_ir_after_all else "change" if args.print_ir_after_change else None
    prepared = prepare(args.model, cfg, backend=targets[0], print_ir_after=mode)
    prepared.calibrate(args.calib, sampling_size=size)
    model = convert(prepared)
    out = Path(args.output)
    if len(targets) > 1:
        out.mkdir(parents=True, exist_ok=True)  # one artifact folder per target inside it
    written = [model.save(out if len(targets) == 1 else out / t, backend=t) for t in targets]
    seconds = time.perf_counter() - t0
    stats = model.ctx.data.get("calibration", {})
    print(f"converted {args.model} in {seconds:.2f} s ({stats.get('samples', 0)} calibration samples)")
    print(summarize(model))
    for t, path in zip(targets, written, strict=True):
        feed = next(_batches(args.calib, model, size))
        report = _VERIFY[t](path, feed)
        print(f"{t}: {path}")
        print(f"  int8 kernel coverage: {report.coverage_text()}")
        sess = _float_session(Path(args.model))
        names = [o.name for o in sess.get_outputs()]
        fl: list[list[np.ndarray]] = [[] for _ in names]
        qu: list[list[np.ndarray]] = [[] for _ in names]
        for batch in _batches(args.calib, model, size):
            for i, (f, q) in enumerate(zip(sess.run(None, batch), report.run(batch), strict=True)):
                fl[i].append(f)
                qu[i].append(q)
        print("  agreement with the float model on the calibration data:")
        for line in agreement([np.concatenate(x) for x in fl], [np.concatenate(x) for x in qu], names):
            print("  " + line)
    return 0
