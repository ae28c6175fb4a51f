"""Benchmark the torch artifacts: latency of quantir's `pt2e` (torch.compile, Inductor freezing, oneDNN int8) and
`ipex` (frozen TorchScript, run by stock torch as fake-quant float) against eager FP32, compiled FP32 and the peer
PT2E flow (torchao's X86InductorQuantizer: export -> prepare_pt2e -> calibrate -> convert_pt2e -> compile, what
INC's PT2E path runs), at batch 1 and 32, with accuracy beside each row. INC itself is not installed here.

Run `quantir bench --torch [--models digits,minilm]` or `python -m quantir.tools.dev.bench_torch`. A benchmark, not
a test: nothing is asserted; one thread, median of timed runs after a warm-up (the warm-up includes compiling).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["add_arguments", "main"]

MODELS = ("digits", "minilm")
RUNS = {"digits": {1: 200, 32: 50}, "minilm": {1: 20, 32: 5}}
SEQ = 128


def _median_ms(fn: Callable[[], Any], runs: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _compiled(module: Any) -> Callable[..., Any]:
    import torch
    import torch._inductor.config as inductor_config

    compiled = torch.compile(module, dynamic=False)

    def call(*args: Any) -> Any:
        with inductor_config.patch(freezing=True), torch.no_grad():
            return compiled(*args)

    return call


def _digits() -> dict[str, Any]:
    import torch

    from quantir.tools.dev.train_digits import load_bundled_module
    from quantir.tools.digits import load_digits_split

    d = load_digits_split()
    calib = [(torch.from_numpy(b),) for b in np.array_split(d.calib_x, 8)]
    feeds = {n: (torch.from_numpy(d.test_x[:n]),) for n in (1, 32)}

    def score(fn: Callable[..., Any]) -> str:
        out = np.asarray(fn(torch.from_numpy(d.test_x)))
        return f"top-1 {np.mean(out.argmax(1) == d.test_y):.2%}"

    return {"module": load_bundled_module(), "example": (torch.zeros(8, 1, 8, 8),), "calib": calib, "feeds": feeds,
            "score": score, "shapes": ({0: torch.export.Dim("batch")},)}  # fmt: skip


def _minilm() -> dict[str, Any]:
    import torch

    from quantir.tools.minilm import CALIBRATION_COUNT, load_sentences, load_torch_model, mean_cosine, tokenize

    model = load_torch_model()
    sentences = load_sentences()
    calib_s, held = sentences[:CALIBRATION_COUNT], sentences[CALIBRATION_COUNT:][:64]

    def tensors(batch: Sequence[str]) -> tuple[Any, ...]:
        t = tokenize(batch, max_len=SEQ, fixed_length=True)
        return torch.from_numpy(t["input_ids"]), torch.from_numpy(t["attention_mask"])

    calib = [tensors(calib_s[i : i + 16]) for i in range(0, len(calib_s), 16)]
    held_t = tensors(held)
    with torch.no_grad():
        ref = model(*held_t).numpy()

    def score(fn: Callable[..., Any]) -> str:
        return f"cosine {mean_cosine(np.asarray(fn(*held_t)), ref):.5f}"

    feeds = {n: tensors((held * 4)[:n]) for n in (1, 32)}
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=512)
    shapes = ({0: batch, 1: seq}, {0: batch, 1: seq})
    return {"module": model, "example": tensors(calib_s[:2]), "calib": calib, "feeds": feeds, "score": score,
            "shapes": shapes}  # fmt: skip


def _rows(name: str, work: Path) -> list[dict[str, Any]]:
    import torch

    from quantir.backends.ipex.verify import load as load_ipex
    from quantir.backends.pt2e.verify import load as load_pt2e
    from quantir.compiler import StaticQuantConfig, convert, prepare

    spec = _digits() if name == "digits" else _minilm()
    module = spec["module"].eval()
    cfg = StaticQuantConfig() if name == "digits" else StaticQuantConfig(smooth_quant=True, smooth_quant_alpha=0.95)
    candidates: dict[str, Callable[[], Callable[..., Any]]] = {}

    def eager() -> Callable[..., Any]:
        return lambda *a: torch.no_grad()(module)(*a)

    candidates["torch eager FP32"] = eager
    candidates["torch.compile FP32 (freezing)"] = lambda: _compiled(module)

    def quantir(backend: str) -> Callable[..., Any]:
        shapes = spec["shapes"] if name == "minilm" else None
        prepared = prepare(module, cfg, example_inputs=spec["example"], backend=backend, dynamic_shapes=shapes)
        for args in spec["calib"]:
            prepared(*args)
        art = convert(prepared).save(work / f"{name}-{backend}", backend=backend)
        runner = load_pt2e(art) if backend == "pt2e" else load_ipex(art)
        return lambda *a: runner.torch_call(*a)

    candidates["quantir pt2e int8 (Inductor)"] = lambda: quantir("pt2e")
    candidates["quantir ipex TorchScript (stock torch: fake-quant float)"] = lambda: quantir("ipex")

    def peer() -> Callable[..., Any]:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

        quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
        # a dynamic batch (and sequence) in the export; each feed shape then compiles statically, as ours does
        exported = torch.export.export(module, spec["example"], dynamic_shapes=spec["shapes"]).module()
        prepared = prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            for args in spec["calib"]:
                prepared(*args)
        return _compiled(convert_pt2e(prepared))

    candidates["peer: torchao PT2E X86InductorQuantizer int8"] = peer
    rows: list[dict[str, Any]] = []
    for label, make in candidates.items():
        row: dict[str, Any] = {"model": name, "row": label}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn = make()
                row["accuracy"] = spec["score"](fn)
                for n, args in spec["feeds"].items():
                    row[f"b{n}_ms"] = _median_ms(functools.partial(fn, *args), RUNS[name][n])
        except Exception as e:  # a peer flow failing on a model is a result, not a crash
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        print(f"[bench-torch] {name}: {label}: {row}", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'model':7} {'row':58} {'b1 ms':>8} {'b32 ms':>8} {'b1 vs eager':>11} {'b1 vs compiled':>14} "
             f"{'b32 vs eager':>12} {'b32 vs compiled':>15}  accuracy"]  # fmt: skip
    for r in rows:
        base = {b["row"]: b for b in rows if b["model"] == r["model"]}
        eager, comp = base.get("torch eager FP32", {}), base.get("torch.compile FP32 (freezing)", {})
        if "error" in r:
            lines.append(f"{r['model']:7} {r['row']:58} failed: {r['error']}")
            continue

        def ratio(ref: dict[str, Any], key: str, r: dict[str, Any] = r) -> str:
            return f"{ref[key] / r[key]:.2f}x" if key in ref and r.get(key) else "-"

        lines.append(f"{r['model']:7} {r['row']:58} {r['b1_ms']:8.3f} {r['b32_ms']:8.3f} {ratio(eager, 'b1_ms'):>11} "
                     f"{ratio(comp, 'b1_ms'):>14} {ratio(eager, 'b32_ms'):>12} {ratio(comp, 'b32_ms'):>15}  "
                     f"{r['accuracy']}")  # fmt: skip
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: digits, minilm (default both)")
    parser.add_argument("--out", help="write the results as JSON to this file")


def main(argv_or_args: Sequence[str] | argparse.Namespace | None = None) -> int:
    import torch

    from quantir.compiler.isa import detect_cpu

    parser = argparse.ArgumentParser(prog="python -m quantir.tools.dev.bench_torch", description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = argv_or_args if isinstance(argv_or_args, argparse.Namespace) else parser.parse_args(argv_or_args)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="quantir-bench-torch-") as tmp:
        rows = [row for m in models for row in _rows(m, Path(tmp))]
    print(f"CPU: {detect_cpu().describe()}; torch {torch.__version__}; 1 thread; median ms after warm-up "
          "(ratios > 1 mean faster than the baseline)")  # fmt: skip
    print(_table(rows))
    print("INC is not installed here: its PT2E path is the torchao X86InductorQuantizer flow in the peer row.")
    if args.out:
        Path(args.out).write_text(json.dumps({"cpu": detect_cpu().describe(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
