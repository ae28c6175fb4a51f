"""Check a PT2E artifact where it runs: load `model.pt2` with `torch.export.load`, compile it with Inductor and
freezing (`torch._inductor.config.freezing = True`, without which Inductor emits no int8 kernel at all), read the
generated code for oneDNN int8 ops (`onednn.qconv_pointwise`, `onednn.qlinear_pointwise`), and compare the outputs
with the IR's fake-quant reference (ORT, no graph optimization)."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantir.backends.contract import VerifyReport
from quantir.backends.pt2e.capabilities import KERNELS, RUNTIME
from quantir.backends.pt2e.emit import BACKEND, MODEL_FILE
from quantir.backends.torch_codegen.artifact import (
    TorchRunner,
    compare_outputs,
    load_model_file,
    match_kernels,
    quiet,
    read_torch_manifest,
)

__all__ = [
    "compile_program", "generated_code", "kernel_counts", "load", "load_program", "program_units", "verify_pt2e",
]  # fmt: skip

_ONEDNN = re.compile(r"onednn\.(q\w+?)(?:\.default|\.tensor|\.binary|\.binary_tensor)?\(")
_FLOAT_HEAVY = re.compile(
    r"(aten\.convolution|aten\.mm|aten\.addmm|aten\.bmm|extern_kernels\.(?:mm|addmm|bmm|convolution))\("
)


def load_program(artifact_dir: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """The artifact's exported program and manifest."""
    return load_model_file(artifact_dir, BACKEND, MODEL_FILE, torch.export.load, "torch.export.load")


def compile_program(module: torch.nn.Module) -> Callable[..., Any]:
    """`torch.compile(module)` run under Inductor freezing (set per call), static shapes: each new input shape
    compiles once. (Inductor's dynamic-shape recompile of a frozen qconv fails a stride assertion in torch 2.13's
    `qconv` lowering, seen on the digits CNN at a second batch size; static shapes avoid it.)"""
    import torch._inductor.config as inductor_config

    compiled = torch.compile(module, dynamic=False)

    def call(*args: torch.Tensor) -> Any:
        with inductor_config.patch(freezing=True), quiet():
            return compiled(*args)

    return call


def load(artifact_dir: str | os.PathLike[str], *, threads: int | None = None, compile: bool = True) -> TorchRunner:
    """The artifact as a Runner: compiled with Inductor and freezing (int8 kernels; the first call of each shape
    compiles), or `compile=False`: the exported module run eagerly (the same numbers in float ops)."""
    program, manifest = load_program(artifact_dir)
    module = program.module()
    fn = compile_program(module) if compile else module
    spec = manifest.get("torch", {})
    return TorchRunner(fn, list(spec.get("inputs", [])), list(spec.get("outputs", [])), threads)


def generated_code(runner: TorchRunner, inputs: dict[str, np.ndarray]) -> tuple[list[np.ndarray], str]:
    """Run `runner` once on `inputs`, returning its outputs and the code Inductor generated for it."""
    from torch._inductor.utils import run_and_get_code

    args = [torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in runner.input_names]
    with quiet():
        out, codes = run_and_get_code(runner.torch_call, *args)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().numpy() for o in outs], "\n".join(codes)


def kernel_counts(code: str) -> tuple[Counter[str], Counter[str]]:
    """(oneDNN int8 ops, float conv/matmul kernels) called by Inductor-generated code."""
    return Counter(f"onednn.{m}" for m in _ONEDNN.findall(code)), Counter(_FLOAT_HEAVY.findall(code))


_HEAVY_TARGETS = ("aten.conv1d", "aten.conv2d", "aten.conv3d", "aten.linear", "aten.convolution")


def program_units(program: Any) -> list[dict[str, Any]]:
    """Every conv/linear of an exported program, in graph order: its module path (the last `nn_module_stack`
    entry), and whether its activation and weight are read through `quantized_decomposed` dequantize ops."""
    rows = []
    for n in program.graph.nodes:
        target = str(n.target)
        if n.op != "call_function" or not target.startswith(_HEAVY_TARGETS):
            continue
        stack = n.meta.get("nn_module_stack") or {}
        path = list(stack.values())[-1][0] if stack else ""
        x, w = n.args[0], n.args[1]
        deq = [getattr(a, "op", "") == "call_function" and "quantized_decomposed.dequantize" in str(a.target)
               for a in (x, w)]  # fmt: skip
        rows.append({"op": target.split(".")[1], "module": path, "activation_int8": deq[0], "weight_int8": deq[1]})
    return rows


def verify_pt2e(artifact_dir: str | os.PathLike[str], inputs: dict[str, np.ndarray], *, max_lsb: float = 1.0,
                max_rel: float = 2e-2) -> VerifyReport:  # fmt: skip
    """Compile the artifact with Inductor (freezing), map each quantized IR unit to a oneDNN int8 op of its kind in
    the generated code (in execution order), and compare the outputs with the fake-quant reference."""
    folder = Path(artifact_dir)
    runner = load(folder)
    manifest = read_torch_manifest(folder, BACKEND)
    report = VerifyReport(backend=BACKEND, artifact=folder, runtime=RUNTIME, runner=runner)
    _, code = generated_code(runner, inputs)
    int8, floats = kernel_counts(code)
    found = [(name, name) for name, n in int8.items() for _ in range(n)]
    report.nodes = match_kernels(manifest.get("quantized_nodes", []), found, KERNELS)
    report.kernels = dict(int8)
    report.leftover = dict(floats)
    extra = sum(int8.values()) - sum(r.int8 for r in report.nodes)
    if extra > 0:
        report.unmatched_kernels.append(f"{extra} oneDNN int8 op(s) beyond the IR's quantized units")
    compare_outputs(report, folder, manifest, runner, inputs, max_lsb, max_rel, RUNTIME)
    return report
