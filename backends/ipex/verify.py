"""Check an IPEX artifact in stock torch: `torch.jit.load` the frozen model, run it twice (the profiling executor's
warm-up, as IPEX needs before it fuses), and report which quantized IR units appear in the graph as the int8
pattern IPEX's JIT fuses (`dequantize(x), dequantize(w) -> conv/linear`), and whether the outputs agree with the
IR's fake-quant reference. Stock torch runs those patterns as float ops with explicit quantize/dequantize; only
IPEX (torch 2.8, the opt-in lane) turns them into `ipex::LlgaFusionGroup` int8 kernels, so the report says
"pattern present", not "ran int8"."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantir.backends.contract import VerifyReport
from quantir.backends.ipex.capabilities import KERNELS, RUNTIME
from quantir.backends.ipex.emit import BACKEND, MODEL_FILE, int8_patterns
from quantir.backends.torch_codegen.artifact import (
    TorchRunner,
    compare_outputs,
    load_model_file,
    match_kernels,
)

__all__ = ["load", "load_script", "verify_ipex"]


def load_script(artifact_dir: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """The artifact's TorchScript module (`torch.jit.load`) and manifest."""
    script, manifest = load_model_file(artifact_dir, BACKEND, MODEL_FILE, torch.jit.load, "torch.jit.load")
    return script.eval(), manifest


def load(artifact_dir: str | os.PathLike[str], *, threads: int | None = None) -> TorchRunner:
    """The frozen TorchScript model as a Runner."""
    script, manifest = load_script(artifact_dir)
    spec = manifest.get("torch", {})
    return TorchRunner(script, list(spec.get("inputs", [])), list(spec.get("outputs", [])), threads)


def verify_ipex(artifact_dir: str | os.PathLike[str], inputs: dict[str, np.ndarray], *, max_lsb: float = 1.0,
                max_rel: float = 2e-2) -> VerifyReport:  # fmt: skip
    """Load in stock torch, find each quantized unit's int8 pattern in the frozen graph, compare the outputs."""
    folder = Path(artifact_dir)
    runner = load(folder)
    script, manifest = load_script(folder)
    report = VerifyReport(backend=BACKEND, artifact=folder, runtime=f"{RUNTIME}, loaded in stock torch "
                          f"{torch.__version__}", runner=runner)  # fmt: skip
    for _ in range(2):
        runner(inputs)
    patterns = int8_patterns(script.graph)
    found = [(KERNELS[kind], desc) for kind, desc in patterns]
    report.nodes = match_kernels(manifest.get("quantized_nodes", []), found, KERNELS)
    nodes = Counter(n.kind() for n in script.graph.nodes())
    report.kernels = {"int8 pattern " + k: n for k, n in Counter(d for _, d in patterns).items()}
    report.leftover = {k: nodes[k] for k in ("aten::quantize_per_tensor", "aten::dequantize") if nodes[k]}
    report.notes.append("stock torch runs these patterns in float with explicit quantize/dequantize; IPEX 2.8's "
                        "JIT fuses each into an ipex::LlgaFusionGroup (not available with torch "
                        f"{torch.__version__})")  # fmt: skip
    extra = len(patterns) - sum(r.int8 for r in report.nodes)
    if extra > 0:
        report.unmatched_kernels.append(f"{extra} quantized conv/linear pattern(s) beyond the IR's quantized units")
    compare_outputs(report, folder, manifest, runner, inputs, max_lsb, max_rel, RUNTIME)
    return report
