"""The corpus table: every model of `quantir.tools.corpus` through quantir (ONNX QDQ and OpenVINO), ONNX Runtime's
`quantize_static` and NNCF, on the same calibration data, in one run: conversion success, int8 coverage of the
heavy ops in the runtime, and agreement with the float model on held-out data.

`python -m quantir.tools.dev.corpus_table [--models a,b] [--tools ...] [--out results.json]`. A benchmark, not a
test. The method is printed with the table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from quantir.tools.corpus import MODELS, CorpusModel, agreement, model_named

__all__ = ["main"]

TOOLS = ("quantir-qdq", "ort", "quantir-ov", "nncf")
OV_TOOLS = ("quantir-ov", "nncf")
CALIB, HELD_OUT = 64, 32
TIMEOUT_S = 1800
METHOD = f"""\
Method. Data: {CALIB} calibration samples (seed 1) and {HELD_OUT} held-out samples (seed 2) of each model's own
input kind (see quantir.tools.corpus). Every conversion runs in its own child process. quantir: the CLI as a user
runs it, `quantir convert model.onnx --to onnx-qdq|openvino --calib calib.npz -o DIR`, defaults otherwise; when its
quality gate refuses the model (exit 2), the row says `gate` and is measured from a rerun with
--accept-low-accuracy. ORT: `quant_pre_process` (falling back to the raw model when it fails, marked `raw`), then
`quantize_static(QDQ, per_channel=True, MinMax, QUInt8 activations, QInt8 weights)`. NNCF: `ov.convert_model` then
`nncf.quantize(model, nncf.Dataset(batches), subset_size={CALIB})`, default preset. Batches are the model's batch
(its fixed batch where it has one). int8: heavy ops (Conv/MatMul/Gemm) that run an integer kernel over all heavy
ops: for ONNX artifacts the fused kernels in ORT's ENABLE_EXTENDED-optimized graph over the float model's heavy
ops; for OpenVINO artifacts the runtime nodes with an _I8 primitive over all heavy runtime nodes (CPU plugin, f32
inference precision). Agreement on the held-out set against the float model in ORT: mean cosine of output 0, and
the model's metric: top-1 agreement (argmax over the last axis, per sample or per CTC step) or the IoU of the
detector's probability map > 0.3."""


def _child(tool: str, name: str, src: str, calib: str, out: str) -> dict[str, Any]:
    """One peer conversion (ORT or NNCF) in this fresh process."""
    model = model_named(name)
    with np.load(calib) as z:
        batches = model.batches({k: z[k] for k in z.files})
    result: dict[str, Any] = {}
    start = time.perf_counter()
    if tool == "ort":
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from quantir.tools.dev.ort_baseline import ort_quantize_static

        pre = Path(out) / "preprocessed.onnx"
        try:
            quant_pre_process(src, str(pre))
            chosen = str(pre)
        except Exception as e:  # ORT's pre-processing fails on some models; its quantizer still runs on the raw one
            result["note"] = f"raw (quant_pre_process: {type(e).__name__})"
            chosen = src
        ort_quantize_static(chosen, Path(out) / "model.onnx", batches)
        result["artifact"] = str(Path(out) / "model.onnx")
    else:
        import nncf  # type: ignore[import-untyped]  # may ship no type information
        import openvino as ov

        quantized = nncf.quantize(ov.convert_model(src), nncf.Dataset(batches), subset_size=CALIB)
        ov.save_model(quantized, Path(out) / "model.xml", compress_to_fp16=False)
        result["artifact"] = str(Path(out) / "model.xml")
    result["seconds"] = time.perf_counter() - start
    return result


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower():
            return line.strip()[:300]
    return (lines[-1] if lines else "").strip()[:300]


def _convert(tool: str, model: CorpusModel, src: Path, calib: Path, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if tool.startswith("quantir"):
        target = "onnx-qdq" if tool == "quantir-qdq" else "openvino"
        cmd = [sys.executable, "-m", "quantir.tools.cli", "convert", str(src), "--to", target, "--calib", str(calib),
               "-o", str(out / "artifact")]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
        row: dict[str, Any] = {"seconds": time.perf_counter() - start, "rc": done.returncode}
        (out / "log.txt").write_text(done.stdout + done.stderr)
        if done.returncode == 2 and "quality gate" in (done.stdout + done.stderr).lower():
            row["note"] = "gate"
            done = subprocess.run([*cmd, "--accept-low-accuracy"], capture_output=True, text=True, timeout=TIMEOUT_S)
        if done.returncode != 0:
            row["error"] = _first_line(done.stderr or done.stdout)
            return row
        row["artifact"] = str(out / "artifact" / ("model.onnx" if target == "onnx-qdq" else "model.xml"))
        return row
    code = ("import json,sys; from quantir.tools.dev.corpus_table import _child; "
            "print(json.dumps(_child(*sys.argv[1:])))")  # fmt: skip
    try:
        done = subprocess.run([sys.executable, "-c", code, tool, model.name, str(src), str(calib), str(out)],
                              capture_output=True, text=True, timeout=TIMEOUT_S, cwd=out)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {TIMEOUT_S} s"}
    (out / "log.txt").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        return {"error": _first_line(done.stderr) or f"exit {done.returncode}", "rc": done.returncode}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _run_all(session: Any, batches: list[dict[str, np.ndarray]]) -> np.ndarray:
    return np.concatenate([session.run(None, feed)[0] for feed in batches])


def _measure(tool: str, row: dict[str, Any], src: Path, held: list[dict[str, np.ndarray]], reference: np.ndarray,
             metric: str, work: Path) -> None:  # fmt: skip
    from quantir.backends.onnx_proto.runtime import ort_session
    from quantir.tools.dev.bench import _coverage, _OVSession, ov_int8_coverage

    try:
        if tool in OV_TOOLS:
            session: Any = _OVSession(row["artifact"])
            cov = ov_int8_coverage(session.compiled)
            row["int8"] = f"{cov['int8_kernels']}/{cov['runtime_heavy']}"
        else:
            session = ort_session(row["artifact"])
            cov = _coverage(src, row["artifact"], work)
            row["int8"] = f"{cov['int8_kernels']}/{cov['heavy_ops']}"
        row.update(agreement(metric, reference, _run_all(session, held)))
    except Exception as e:  # a produced artifact that does not run is a failure of that tool, reported in the row
        row["error"] = f"artifact does not run: {type(e).__name__}: {str(e).splitlines()[0][:200]}"


def _model_rows(model: CorpusModel, tools: Sequence[str], work: Path) -> dict[str, Any]:
    from quantir.backends.onnx_proto.runtime import ort_session

    folder = work / model.name
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "model.onnx"
    model.write(src)
    calib = folder / "calib.npz"
    np.savez(calib, allow_pickle=False, **model.data(CALIB, 1))
    held = model.batches(model.data(HELD_OUT, 2))
    reference = _run_all(ort_session(src), held)
    rows: dict[str, Any] = {}
    for tool in tools:
        try:
            row = _convert(tool, model, src, calib, folder / tool)
        except subprocess.TimeoutExpired:
            row = {"error": f"timed out after {TIMEOUT_S} s"}
        if "artifact" in row:
            _measure(tool, row, src, held, reference, model.metric, folder / tool)
        rows[tool] = row
        print(f"  {model.name:18s} {tool:12s} {_cell(row, model.metric)}", flush=True)
    return rows


def _cell(row: dict[str, Any], metric: str) -> str:
    if "error" in row:
        return f"FAIL: {row['error']}"
    extra = f" {metric} {row[metric]:.2f}{'%' if metric == 'top1' else ''}" if metric in row else ""
    note = f" [{row['note']}]" if "note" in row else ""
    return f"ok int8 {row.get('int8', '?')} cos {row.get('cosine', float('nan')):.4f}{extra}{note}"


def _table(results: dict[str, Any], tools: Sequence[str]) -> str:
    lines = ["| model | metric | " + " | ".join(tools) + " |", "|---|---|" + "---|" * len(tools)]
    for name, rows in results["models"].items():
        metric = model_named(name).metric
        cells = []
        for tool in tools:
            row = rows[tool]
            if "error" in row:
                cells.append("FAIL")
                continue
            value = f" / {row[metric]:.2f}" if metric in row else ""
            note = f" ({row['note']})" if "note" in row else ""
            cells.append(f"{row['int8']} · {row['cosine']:.4f}{value}{note}")
        lines.append(f"| {name} | {'cos' if metric == 'cosine' else 'cos / ' + metric} | " + " | ".join(cells) + " |")
    ok = {t: sum("error" not in rows[t] for rows in results["models"].values()) for t in tools}
    lines.append("| **converted** | | " + " | ".join(f"{ok[t]}/{len(results['models'])}" for t in tools) + " |")
    failures = [f"- {name} / {tool}: {rows[tool]['error']}" for name, rows in results["models"].items()
                for tool in tools if "error" in rows[tool]]  # fmt: skip
    return "\n".join(lines + (["", "Failures:", *failures] if failures else []))


def _environment() -> str:
    from importlib import metadata

    from quantir.compiler.isa import detect_cpu

    cpu = detect_cpu()
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("onnxruntime", "openvino", "nncf", "onnx", "torch"))
    return f"CPU: {cpu.describe()}; {versions}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="corpus_table", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(m.name for m in MODELS))
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--workdir", help="keep models and artifacts here (default: a temporary directory)")
    parser.add_argument("--out", help="also write the results as JSON")
    args = parser.parse_args(argv)
    tools = [t for t in args.tools.split(",") if t]
    unknown = [t for t in tools if t not in TOOLS]
    if unknown:
        parser.error(f"unknown tools {unknown}; expected {', '.join(TOOLS)}")
    try:
        models = [model_named(n) for n in args.models.split(",") if n]
    except KeyError as e:
        parser.error(str(e.args[0]))
    print(_environment(), flush=True)
    results: dict[str, Any] = {"environment": _environment(), "models": {}}
    with tempfile.TemporaryDirectory(prefix="quantir-corpus-") as tmp:
        work = Path(args.workdir or tmp)
        for model in models:
            results["models"][model.name] = _model_rows(model, tools, work)
    print("\n" + _table(results, tools) + "\n\n" + METHOD)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
