"""Benchmark quantir against ONNX Runtime's `quantize_static` on the digits CNN and all-MiniLM-L6-v2, on the same
calibration data: conversion time and peak RSS (each conversion in its own process), accuracy, latency, int8 coverage.

Run `python -m quantir.tools.dev.bench [--models digits,minilm] [--calib-factor N] [--out results.json]` or
`quantir bench`. A benchmark, not a test: it asserts nothing about time. The method is printed with the table.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from quantir.backends.onnx_proto.runtime import ort_session
from quantir.ir import ConfigError
from quantir.tools.dev.bench_child import DIGITS_BATCH, MINILM_BATCH, MINILM_SEQ, OV_TOOLS, SMOOTH_ALPHA

__all__ = ["add_arguments", "main"]

MODELS = ("digits", "minilm")
TOOLS = ("ort", "quantir", "quantir-sq", "nncf", "quantir-ov", "quantir-sq-ov")
LOW_BIT_TOOLS = ("ort-dynamic", "quantir-dynamic", "quantir-dynamic-ov", "ort-nbits", "quantir-rtn", "quantir-gptq",
                 "quantir-awq", "nncf-woq", "quantir-rtn-ov")  # fmt: skip
"""Weight-only and dynamic rows (MiniLM: `--tools` names them; they read no calibration data)."""
HEAVY_OPS = ("Conv", "MatMul", "Gemm")
INT8_KERNELS = ("QLinearConv", "QLinearMatMul", "QGemm", "MatMulIntegerToFloat", "ConvInteger", "MatMulInteger",
                "DynamicQuantizeMatMul", "MatMulNBits")  # fmt: skip
LATENCY_RUNS = {"digits": {1: 300, 32: 100}, "minilm": {1: 50, 32: 10}}
METHOD = f"""\
Method. Each conversion runs in its own child process (quantir byte-compiled first, as a regular install is). `conv
s`: wall time of the conversion call(s) in the child (model import, calibration, emission, save; library imports
excluded); `import + conv s`: the tool's own imports (after numpy and the data, which every child loads first) plus
the call, i.e. the first conversion in a fresh process, where one-time library initialization falls wherever each
tool puts it; `process s`: the whole child, interpreter start and imports included; `peak MB`: the child's VmHWM.
`xFP32 pass`: conv s over one FP32 ORT pass over the same calibration batches (the physical floor, its own child,
after one warm-up batch).
ORT: `quant_pre_process` (its documented pre-processing: shape inference, basic optimizations, BN folding; its
symbolic shape inference fails on the exporter's Constant(value_ints) nodes, so where a probe in the parent sees
that, the child calls it with skip_symbolic_shape=True) then `quantize_static(QDQ, per_channel=True, MinMax,
QUInt8 activations, QInt8 weights)`; conv s includes the pre-processing. ORT 1.32's signature default is QInt8
activations; QUInt8/QInt8 is its documented x86 recommendation and quantir's default. quantir: `quantize(path,
StaticQuantConfig(calibration_sampling_size=<samples>), batches).save(dir)`, everything else default.
Calibration: digits 256 images in batches of {DIGITS_BATCH}; MiniLM the first 100 sentences in batches of
{MINILM_BATCH}, each padded to its longest; `peak MB x<N> calib` repeats the calibration set N times.
Latency: median of ORT CPU runs (default threads, 3 warm-ups), {LATENCY_RUNS} runs by model and batch size,
taken in 5 rounds in which FP32 and the quantized models take turns; MiniLM pads every sentence to {MINILM_SEQ}
tokens.
int8 heavy ops: fused integer kernels ({", ".join(INT8_KERNELS)}) in ORT's ENABLE_EXTENDED-optimized model over
Conv/MatMul/Gemm in the FP32 model; Q/DQ left: QuantizeLinear/DequantizeLinear nodes left after that optimization.
OpenVINO rows (nncf, quantir-ov, quantir-sq-ov): nncf is `ov.convert_model(float.onnx)` then `nncf.quantize(model,
nncf.Dataset(<the same calibration batches>), subset_size=<number of batches>)` (default preset and options) and
`ov.save_model(compress_to_fp16=False)`; quantir-ov / quantir-sq-ov are the quantir configs above saved with
backend="openvino". Their accuracy and latency are measured in OpenVINO (CPU plugin, default threads, one infer
request), latency ratios against the FP32 ONNX model compiled by OpenVINO (`FP32 (OpenVINO)`). Their int8 heavy ops:
runtime nodes (Convolution/GroupConvolution/FullyConnected/MatMul...) whose runtimePrecision is u8/i8 and whose
primitiveType ends in _I8, counted with the same function for NNCF and quantir, over Conv/MatMul/Gemm in the FP32
model; `FQ left`: FakeQuantize nodes left in the runtime graph.
Accuracy: digits top-1 on the 597 held-out images; MiniLM mean cosine of sentence embeddings vs FP32 over the
held-out sentences (lines 101+ of tools/data/sentences.txt)."""


# ---- workloads: the same data for every tool -------------------------------------------------------------------


def _source_model(name: str) -> Path:
    if name == "digits":
        from quantir.tools.digits import bundled_model_path

        return bundled_model_path()
    from quantir.tools.minilm import export_minilm

    return export_minilm()


def _run_child(model: str, tool: str, source: Path, out_dir: Path, factor: int = 1) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = {"model": model, "tool": tool, "source": str(source), "out_dir": str(out_dir), "factor": factor}
    if tool in ("ort", "ort-dynamic", "ort-nbits"):
        spec["skip_symbolic_shape"] = _ort_needs_skip_symbolic_shape(source)
    result_path, log_path = out_dir / "result.json", out_dir / "child.log"
    started = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "quantir.tools.dev.bench_child", json.dumps(spec), str(result_path)],
            stdout=log, stderr=subprocess.STDOUT, check=False,
        )  # fmt: skip
    if proc.returncode != 0 or not result_path.exists():
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
        return {"error": lines[-1][-300:] if lines else f"exit code {proc.returncode}", "log_tail": lines[-12:]}
    return {**json.loads(result_path.read_text()), "process_s": time.perf_counter() - started}


# ---- measurements in the parent -------------------------------------------------------------------------------------


class _OVInput:
    def __init__(self, name: str) -> None:
        self.name = name


class _OVSession:
    """An OpenVINO CPU compiled model behind the slice of ORT's InferenceSession API the benchmark uses."""

    def __init__(self, path: str | Path) -> None:
        import openvino as ov

        from quantir.backends.onnx_proto.artifact import read_manifest
        from quantir.backends.openvino.verify import CPU_CONFIG

        # the same precision for every tool; a quantir artifact's own runtime properties (dynamic quantization) too
        runtime = (read_manifest(Path(path).parent) or {}).get("openvino", {}).get("runtime_config", {})
        self.compiled = ov.Core().compile_model(str(path), "CPU", CPU_CONFIG | dict(runtime))
        self.request = self.compiled.create_infer_request()
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]

    def get_inputs(self) -> list[_OVInput]:
        return [_OVInput(i.get_any_name()) for i in self.compiled.inputs]

    def run(self, names: Sequence[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.request.infer(feed)
        wanted = self.output_names if names is None else list(names)
        return [np.array(self.request.get_tensor(n).data) for n in wanted]


def ov_int8_coverage(compiled: Any) -> dict[str, int]:
    """Runtime nodes of an OpenVINO CPU compiled model: heavy layers (Convolution, FullyConnected, MatMul...) that
    run an int8 kernel (runtimePrecision u8/i8, primitiveType ending in _I8), all heavy layers, FakeQuantize left.
    The same counter for NNCF's and quantir's models."""
    from quantir.backends.openvino.capabilities import COVERAGE_LAYERS, is_int8_primitive, is_weight_only_kernel
    from quantir.backends.openvino.verify import runtime_nodes

    rows = runtime_nodes(compiled)
    heavy = [r for r in rows if r["layer"] in COVERAGE_LAYERS]
    return {
        "int8_kernels": sum(
            is_int8_primitive(r["precision"], r["primitive"]) or is_weight_only_kernel(r["layer"], r["precision"])
            for r in heavy
        ),
        "runtime_heavy": len(heavy),
        "fq_left": sum(r["layer"] == "FakeQuantize" for r in rows),
    }


def _latency_feeds(name: str) -> dict[int, dict[str, np.ndarray]]:
    if name == "digits":
        from quantir.tools.digits import load_digits_split

        x = load_digits_split().test_x
        return {1: {"x": x[:1]}, 32: {"x": x[:32]}}
    from quantir.tools.minilm import CALIBRATION_COUNT, load_sentences, tokenize

    held = load_sentences()[CALIBRATION_COUNT:]
    return {b: tokenize(held[:b], MINILM_SEQ, fixed_length=True) for b in (1, 32)}


def _latency_ms(sessions: dict[str, Any], name: str, rounds: int = 5) -> dict[str, dict[int, float]]:
    """Median latency per session and batch size. The sessions take turns in `rounds` rounds, so load that comes
    and goes on a shared machine lands on every model alike instead of on whichever ran at that moment."""
    feeds = _latency_feeds(name)
    times: dict[str, dict[int, list[float]]] = {tool: {b: [] for b in feeds} for tool in sessions}
    for session in sessions.values():
        for feed in feeds.values():
            for _ in range(3):
                session.run(None, feed)
    for _ in range(rounds):
        for tool, session in sessions.items():
            for batch, feed in feeds.items():
                for _ in range(max(1, LATENCY_RUNS[name][batch] // rounds)):
                    start = time.perf_counter()
                    session.run(None, feed)
                    times[tool][batch].append(time.perf_counter() - start)
    return {tool: {b: float(np.median(t) * 1e3) for b, t in by_batch.items()} for tool, by_batch in times.items()}


def _evaluate(name: str, session: Any, reference: np.ndarray | None) -> tuple[float, np.ndarray]:
    """(accuracy, raw outputs): digits top-1 in percent; MiniLM mean cosine vs `reference` (FP32 embeddings)."""
    if name == "digits":
        from quantir.tools.digits import load_digits_split

        split = load_digits_split()
        logits = session.run(None, {"x": split.test_x})[0]
        return _top1(logits, split.test_y), logits
    from quantir.tools.minilm import CALIBRATION_COUNT, embed, load_sentences, mean_cosine

    emb = embed(session, load_sentences()[CALIBRATION_COUNT:], batch_size=MINILM_BATCH)
    return (1.0 if reference is None else mean_cosine(emb, reference)), emb


def _top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Digits top-1 in percent."""
    return float((logits.argmax(axis=1) == labels).mean() * 100)


def _rel_l2(outputs: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(outputs - reference) / np.linalg.norm(reference))


def _ties(logits: np.ndarray, labels: np.ndarray) -> tuple[int, float]:
    """Digits images whose largest logit is shared by several classes (quantized logits can be bit-identical; argmax
    then picks the lowest class index), and top-1 in percent counting such an image as wrong."""
    tied = (logits == logits.max(axis=1, keepdims=True)).sum(axis=1) > 1
    correct = (logits.argmax(axis=1) == labels) & ~tied
    return int(tied.sum()), float(correct.mean() * 100)


SUBSETS = 4
"""Disjoint 256-image calibration sets drawn from the digits training images, for `_calibration_subsets`."""


def _calibration_subsets(work: Path) -> dict[str, list[dict[str, float]]]:
    """Digits accuracy of ORT's tool and quantir (both default, as in the table) calibrated on each of `SUBSETS`
    disjoint 256-image training subsets: top-1 on the held-out images, top-1 agreement with FP32, logits rel L2.

    On 597 held-out images one image is 0.17 pt, so a single calibration set cannot rank two tools whose results
    differ by one image; this shows whether a difference persists across calibration sets. Not timed."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from quantir.compiler.api import quantize
    from quantir.compiler.config.quant_config import StaticQuantConfig
    from quantir.tools.dev.ort_baseline import ort_quantize_static
    from quantir.tools.digits import bundled_model_path, load_digits_split

    split, source = load_digits_split(), bundled_model_path()
    reference = ort_session(source).run(None, {"x": split.test_x})[0]
    pre = work / "subsets" / "preprocessed.onnx"
    pre.parent.mkdir(parents=True, exist_ok=True)
    quant_pre_process(source, pre, skip_symbolic_shape=_ort_needs_skip_symbolic_shape(source))
    rows: dict[str, list[dict[str, float]]] = {"ort": [], "quantir": []}
    for k in range(SUBSETS):
        x = split.train_x[256 * k : 256 * (k + 1)]

        def batches(x: np.ndarray = x) -> Iterator[dict[str, np.ndarray]]:
            return ({"x": x[i : i + DIGITS_BATCH]} for i in range(0, len(x), DIGITS_BATCH))

        ort_path = work / "subsets" / f"ort_{k}.onnx"
        ort_quantize_static(pre, ort_path, batches())
        quantize(source, StaticQuantConfig(calibration_sampling_size=len(x)), batches()).save(
            work / "subsets" / f"q{k}"
        )
        for tool, path in (("ort", ort_path), ("quantir", work / "subsets" / f"q{k}" / "model.onnx")):
            logits = ort_session(path).run(None, {"x": split.test_x})[0]
            rows[tool].append({
                "top1": _top1(logits, split.test_y),
                "strict_top1": _ties(logits, split.test_y)[1],
                "fp32_agreement": _top1(logits, reference.argmax(1)),
                "rel_l2": _rel_l2(logits, reference),
            })  # fmt: skip
    return rows


def _subsets_table(rows: dict[str, list[dict[str, float]]]) -> str:
    lines = [
        f"digits over {SUBSETS} disjoint 256-image calibration sets (held-out top-1 / the same counting tied top "
        "logits as wrong / top-1 agreement with FP32 / logits rel L2 vs FP32, per set, then mean):"
    ]
    for tool, runs in rows.items():
        cells = [f"{r['top1']:.2f}% / {r['strict_top1']:.2f}% / {r['fp32_agreement']:.2f}% / {r['rel_l2']:.4f}"
                 for r in runs]  # fmt: skip
        mean = {key: float(np.mean([r[key] for r in runs])) for key in runs[0]}
        lines.append(f"  {tool:8s} " + " | ".join(cells) + f" || mean {mean['top1']:.2f}% / {mean['strict_top1']:.2f}%"
                     f" / {mean['fp32_agreement']:.2f}% / {mean['rel_l2']:.4f}")  # fmt: skip
    return "\n".join(lines)


def _op_counts(path: str | Path) -> Counter[str]:
    import onnx

    return Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def _coverage(fp32: Path, quantized: str, tmp: Path) -> dict[str, int]:
    optimized = tmp / "ort_optimized.onnx"
    ort_session(quantized, level="extended", optimized_to=optimized)
    ops, heavy = _op_counts(optimized), _op_counts(fp32)
    return {
        "int8_kernels": sum(ops[k] for k in INT8_KERNELS),
        "heavy_ops": sum(heavy[k] for k in HEAVY_OPS),
        "quantize_left": ops["QuantizeLinear"],
        "dequantize_left": ops["DequantizeLinear"],
    }


def _quantir_verify(artifact: Path, inputs: dict[str, np.ndarray], fp32: Path) -> dict[str, Any]:
    """quantir's own check (`verify_onnx_qdq`): fused-kernel coverage of the nodes it quantized, fused vs unfused."""
    try:
        from quantir.backends.onnx_qdq.verify import verify_onnx_qdq

        report = verify_onnx_qdq(artifact, inputs, float_model=fp32)
    except Exception as e:  # reported, never fatal: `_coverage` is the measure common to both tools
        return {"error": f"{type(e).__name__}: {e}"}
    (artifact.parent / "verify.txt").write_text(report.format())
    return {
        "coverage": report.coverage, "kernels": report.kernels, "leftover": report.leftover, "ok": report.ok,
        "disagreements": report.disagreements, "missed": [r.name for r in report.missed],
    }  # fmt: skip


@functools.cache
def _ort_needs_skip_symbolic_shape(source: Path) -> bool:
    """Whether ORT's `quant_pre_process` fails on `source` unless told skip_symbolic_shape=True (its symbolic shape
    inference cannot read the torch exporter's Constant(value_ints) nodes). Probed here, in the parent, so that the
    measured child runs only the call a user who knows would make, and no failed attempt warms its caches."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="quantir-bench-probe-") as tmp:
        try:
            quant_pre_process(source, Path(tmp) / "pre.onnx")
        except Exception:  # any failure of the symbolic pass; the retried run is the one measured
            return True
    return False


def _byte_compile_quantir() -> None:
    """Byte-compile quantir's modules, as `pip install .` does, so an editable or PYTHONDONTWRITEBYTECODE checkout
    does not charge quantir's import for compiling its sources (the peers' installed modules are compiled)."""
    import compileall
    import importlib

    for path in importlib.import_module("quantir").__path__:
        compileall.compile_dir(path, quiet=1, workers=1)


def _repeated(name: str, tool: str, source: Path, out_dir: Path, repeat: int) -> dict[str, Any]:
    """`repeat` fresh child conversions: conversion and process time are their medians, peak RSS their maximum."""
    runs = [_run_child(name, tool, source, out_dir) for _ in range(repeat)]
    if any("error" in r for r in runs):
        return next(r for r in runs if "error" in r)
    row = dict(runs[-1])
    row["seconds"] = float(np.median([r["seconds"] for r in runs]))
    row["import_s"] = float(np.median([r["import_s"] for r in runs]))
    row["first_s"] = float(np.median([r["import_s"] + r["seconds"] for r in runs]))
    row["process_s"] = float(np.median([r["process_s"] for r in runs]))
    row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    row["runs"] = repeat
    return row


def _bench_model(name: str, tools: Sequence[str], factor: int, work: Path, repeat: int = 1) -> dict[str, Any]:
    source = _source_model(name)
    floor = _run_child(name, "fp32", source, work / name / "fp32")
    sessions: dict[str, Any] = {"fp32": ort_session(source)}
    fp32_acc, reference = _evaluate(name, sessions["fp32"], None)
    rows: dict[str, Any] = {"fp32": {**floor, "accuracy": fp32_acc}}
    if any(t in OV_TOOLS for t in tools):
        sessions["fp32-ov"] = _OVSession(source)
        rows["fp32-ov"] = {"accuracy": _evaluate(name, sessions["fp32-ov"], reference)[0]}
    for tool in tools:
        print(f"[bench] {name}: converting with {tool}", file=sys.stderr, flush=True)
        row = rows[tool] = _repeated(name, tool, source, work / name / tool, repeat)
        if "error" not in row:
            ov_row = tool in OV_TOOLS
            try:
                sessions[tool] = _OVSession(row["model"]) if ov_row else ort_session(row["model"])
            except Exception as e:  # a tool that wrote a model its runtime refuses: reported as that tool failing
                row["error"] = f"its model does not load: {type(e).__name__}: {str(e)[:200]}"
                continue
            row["accuracy"], outputs = _evaluate(name, sessions[tool], reference)
            if name == "digits" and reference is not None:  # fidelity to FP32, beyond a 597-image top-1
                from quantir.tools.digits import load_digits_split

                row["fp32_rel_l2"] = _rel_l2(outputs, reference)
                row["tied_top1"], row["strict_accuracy"] = _ties(outputs, load_digits_split().test_y)
            if ov_row:
                heavy = _op_counts(source)
                cov = ov_int8_coverage(sessions[tool].compiled)
                row["coverage"] = {**cov, "heavy_ops": sum(heavy[k] for k in HEAVY_OPS)}
            else:
                row["coverage"] = _coverage(source, row["model"], work / name / tool)
            if tool in ("quantir-ov", "quantir-sq-ov"):
                from quantir.backends.openvino.verify import verify_openvino

                try:
                    rep = verify_openvino(Path(row["model"]).parent, _latency_feeds(name)[32])
                    row["quantir_verify"] = {"coverage": rep.coverage, "text": rep.coverage_text(), "ok": rep.ok}
                except Exception as e:  # reported, never fatal
                    row["quantir_verify"] = {"error": f"{type(e).__name__}: {e}"}
            elif tool.startswith("quantir"):
                row["quantir_verify"] = _quantir_verify(Path(row["model"]).parent, _latency_feeds(name)[32], source)
        if factor > 1:
            big = _run_child(name, tool, source, work / name / f"{tool}_x{factor}", factor=factor)
            row[f"x{factor}"] = {k: big[k] for k in ("seconds", "peak_rss_mb", "samples", "error") if k in big}
    print(f"[bench] {name}: latency", file=sys.stderr, flush=True)
    for tool, latency in _latency_ms(sessions, name).items():
        rows[tool]["latency_ms"] = latency
    return rows


# ---- report ---------------------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _table(results: dict[str, Any], factor: int) -> str:
    head = (
        f"| model | tool | conv s | import + conv s | process s | xFP32 pass | peak MB | peak MB x{factor} calib "
        "| accuracy | b1 ms (xFP32) | b32 ms (xFP32) | int8 heavy ops | Q/DQ left |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for model, rows in results["models"].items():
        base = rows["fp32"]
        for tool, row in rows.items():
            label = {"fp32": "FP32 (calib pass)", "ort": "ORT quantize_static", "quantir": "quantir (default)",
                     "quantir-sq": f"quantir SmoothQuant a={SMOOTH_ALPHA}", "fp32-ov": "FP32 (OpenVINO)",
                     "nncf": "OV: nncf.quantize (default)", "quantir-ov": "OV: quantir (default)",
                     "quantir-sq-ov": f"OV: quantir SmoothQuant a={SMOOTH_ALPHA}",
                     "ort-dynamic": "ORT quantize_dynamic (per channel)", "quantir-dynamic": "quantir dynamic",
                     "quantir-dynamic-ov": "OV: quantir dynamic", "ort-nbits": "ORT MatMulNBits RTN int4 g32 sym",
                     "quantir-rtn": "quantir RTN int4 g32 sym", "quantir-gptq": "quantir GPTQ int4 g32 sym",
                     "quantir-awq": "quantir AWQ int4 g32 sym",
                     "nncf-woq": "OV: nncf.compress_weights int4 g32 sym",
                     "quantir-rtn-ov": "OV: quantir RTN int4 g32 sym"}[tool]  # fmt: skip
            ov_base = rows.get("fp32-ov") if tool in OV_TOOLS else None
            if "error" in row:
                lines.append(f"| {model} | {label} | FAILED: {row['error'].replace('|', '/')} |" + " |" * 10)
                continue
            acc = f"{row['accuracy']:.2f}%" if model == "digits" else f"cos {row['accuracy']:.4f}"
            if row.get("tied_top1"):
                acc += f" ({row['tied_top1']} tied top-1; {row['strict_accuracy']:.2f}% counting ties as wrong)"
            if "fp32_rel_l2" in row:
                acc += f" (logits rel L2 vs FP32 {row['fp32_rel_l2']:.4f})"
            lat = {b: row["latency_ms"][b] for b in (1, 32)} if "latency_ms" in row else {}
            seconds = row.get("seconds")
            cells = [
                model,
                label,
                _fmt(seconds, ".3f"),
                _fmt(row.get("first_s"), ".3f"),
                _fmt(row.get("process_s"), ".2f"),
            ]
            cells.append(_fmt(seconds / base["seconds"] if seconds and "seconds" in base else None, ".0f"))
            big = row.get(f"x{factor}", {})
            big_cell = "FAILED" if "error" in big else _fmt(big.get("peak_rss_mb"), ".0f")
            cells += [_fmt(row.get("peak_rss_mb"), ".0f"), big_cell if tool not in ("fp32", "fp32-ov") else "-", acc]
            ref = (ov_base or base).get("latency_ms", {})
            for b in (1, 32):
                if b not in lat:
                    cells.append("-")
                elif tool in ("fp32", "fp32-ov") or b not in ref:
                    cells.append(f"{lat[b]:.3g}")
                else:
                    cells.append(f"{lat[b]:.3g} ({lat[b] / ref[b]:.2f}x)")
            cov = row.get("coverage")
            cells.append(f"{cov['int8_kernels']}/{cov['heavy_ops']}" if cov else "-")
            if cov and "fq_left" in cov:
                cells.append(f"{cov['fq_left']} FQ")
            else:
                cells.append(f"{cov['quantize_left']} Q + {cov['dequantize_left']} DQ" if cov else "-")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratios(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    pairs = {model: (rows.get("quantir", {}), rows.get("ort", {})) for model, rows in results["models"].items()}
    return {
        model: {
            "conversion_s": q["seconds"] / o["seconds"],
            "import_and_conversion_s": q["first_s"] / o["first_s"],
            "peak_rss": q["peak_rss_mb"] / o["peak_rss_mb"],
        }
        for model, (q, o) in pairs.items()
        if "seconds" in q and "seconds" in o
    }


def _environment() -> dict[str, Any]:
    from importlib import metadata

    versions = {}
    for package in ("onnxruntime", "onnx", "numpy", "torch", "transformers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    from quantir.compiler.isa import detect_cpu

    return {"cpu": detect_cpu().describe(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(), **versions}  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: digits, minilm (default both)")
    every = ", ".join(TOOLS + LOW_BIT_TOOLS)
    parser.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated: {every} (default: the static ones)")
    parser.add_argument("--calib-factor", type=int, default=4, help="repeat the calibration set N times (peak RSS)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="conversions per tool on the digits CNN (tens of ms each): median reported",
    )
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument("--workdir", help="keep the quantized models here (default: a temporary directory)")
    parser.add_argument(
        "--torch", action="store_true", help="benchmark the torch artifacts (pt2e, ipex) against torch FP32 and PT2E"
    )


def _split(value: str, allowed: Sequence[str], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in items if v not in allowed]
    if unknown or not items:
        raise ConfigError(f"bench: unknown {what} {unknown or value!r}; choose from {', '.join(allowed)}")
    return items


def main(argv_or_args: Sequence[str] | argparse.Namespace | None = None) -> int:
    """Run the benchmark; `argv_or_args` is a command line (None: sys.argv) or the namespace `quantir bench` parsed."""
    parser = argparse.ArgumentParser(prog="python -m quantir.tools.dev.bench", description=__doc__.split("\n")[0])
    add_arguments(parser)
    own = not isinstance(argv_or_args, argparse.Namespace)
    args = argv_or_args if isinstance(argv_or_args, argparse.Namespace) else parser.parse_args(argv_or_args)
    if getattr(args, "torch", False):
        from quantir.tools.dev.bench_torch import main as bench_torch

        return bench_torch(args)
    try:
        models, tools = _split(args.models, MODELS, "model"), _split(args.tools, TOOLS + LOW_BIT_TOOLS, "tool")
    except ConfigError as e:
        if own:
            parser.error(str(e))
        raise
    _byte_compile_quantir()
    with tempfile.TemporaryDirectory(prefix="quantir-bench-") as tmp:
        work = Path(args.workdir or tmp)
        results: dict[str, Any] = {"environment": _environment(), "calib_factor": args.calib_factor, "models": {}}
        for name in models:
            repeat = max(1, args.repeat) if name == "digits" else 1
            results["models"][name] = _bench_model(name, tools, args.calib_factor, work, repeat)
        if "digits" in models and {"ort", "quantir"} <= set(tools):
            print("[bench] digits: calibration-set robustness", file=sys.stderr, flush=True)
            results["digits_calibration_subsets"] = _calibration_subsets(work)
    results["ratios_quantir_over_ort"] = _ratios(results)
    env = results["environment"]
    print(f"CPU: {env['cpu']}, {env['cpu_count']} cores (every speed figure below is for this CPU)")
    print(_table(results, args.calib_factor))
    if "digits_calibration_subsets" in results:
        print("\n" + _subsets_table(results["digits_calibration_subsets"]) + "\n")
    for model, r in results["ratios_quantir_over_ort"].items():
        print(f"{model}: quantir/ORT conversion call {r['conversion_s']:.2f}x, imports + call "
              f"{r['import_and_conversion_s']:.2f}x, peak RSS {r['peak_rss']:.2f}x")  # fmt: skip
    print("\n" + METHOD)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str))
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
