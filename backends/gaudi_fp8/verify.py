"""Check a Gaudi FP8 checkpoint without a Gaudi: read it with the `safetensors` library into torch tensors and emulate
it on the CPU with torch's float8 casts.

- Every FP8 module's `weight` is a float8 tensor whose bytes equal the IR's codes (`quant_math.quantize`) in the
  checkpoint layout, and equal torch's own cast of the IR weight (two FP8 implementations, bit for bit); its
  `scale_input`, `scale_weight` and `quant_input.scale_inv` are the IR's scales in hp_dtype.
- The emulated model (the IR's graph, reading the checkpoint's FP8 weights dequantized with its `scale_weight`, and
  quantizing each module's input with its `scale_input`) runs on the given inputs; every FP8 activation is cast by
  torch and by `quant_math`, which must agree bit for bit.
- Its outputs are compared with the IR's fake-quant reference (`model.qdq.onnx` in ONNX Runtime, float8 Q/DQ).

What this cannot show: Gaudi's FP8 GEMM accumulates in its own precision, and Gaudi2 saturates E4M3 at 240 where the
emulation (float8_e4m3fn) saturates at 448; inputs the calibration never saw are where they could differ.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from quantir.backends.contract import KernelRow, VerifyReport
from quantir.backends.gaudi_fp8.capabilities import KERNELS, RUNTIME
from quantir.backends.gaudi_fp8.emit import BACKEND, CHECKPOINT, IR_FILE, IR_TENSORS, hp_dtype_of, module_entries
from quantir.backends.legality import quant_type_of
from quantir.backends.onnx_proto.artifact import read_manifest
from quantir.backends.torch_codegen.artifact import TorchRunner, compare_outputs
from quantir.backends.torch_codegen.module import IRModule, build_module, fp8_codes
from quantir.ir import Graph, QuantType, SerializationError
from quantir.ir.parser import parse
from quantir.ir.quant_math import quantize, round_float
from quantir.ir.sidecar import read_safetensors

__all__ = ["EMULATION_NOTE", "FP8_MAX_REL", "load", "load_checkpoint", "verify_gaudi_fp8"]

EMULATION_NOTE = ("no Gaudi on this machine: the checkpoint's FP8 modules are emulated on the CPU (torch float8 casts, "
                  "then a float32 GEMM); no FP8 kernel runs")  # fmt: skip


class _Emulation:
    """The generated module of the artifact's IR, wired to the checkpoint's tensors."""

    def __init__(self, folder: Path) -> None:
        manifest = read_manifest(folder)
        if manifest is None or manifest.get("backend") != BACKEND:
            raise SerializationError(f"{os.fspath(folder)!r} is not a quantir {BACKEND} artifact")
        self.manifest = manifest
        self.graph: Graph = load_ir(folder)
        self.checkpoint = load_checkpoint(folder / manifest.get("model", CHECKPOINT))
        self.hp = hp_dtype_of(manifest.get("config", {}))
        self.entries = module_entries(self.graph)
        self.module = cast(IRModule, build_module(self.graph, _NoInt8()))
        for e in self.entries:
            x = e.node.inputs[0]
            qx, qw = quant_type_of(x), quant_type_of(e.weight)
            assert x is not None and qx is not None and qw is not None
            w8 = self.tensor(f"{e.module}.weight")
            scale_w = self.tensor(f"{e.module}.scale_weight").float()
            deq = w8.float()
            if e.kind == "linear":  # [in, out]: per-channel scales run along the last axis
                deq = deq * (scale_w.reshape(1, -1) if scale_w.dim() else scale_w)
                deq = deq.T if e.transpose else deq
            else:
                deq = deq * (scale_w.reshape(-1, 1, 1, 1) if scale_w.dim() else scale_w)
            self.module.set_constant(e.weight.name, deq.contiguous())
            s_in = float(self.tensor(f"{e.module}.scale_input").float())
            self.module.set_activation_type(x.name, _with_scale(qx, s_in))

    def tensor(self, key: str) -> torch.Tensor:
        if key not in self.checkpoint:
            raise SerializationError(f"the checkpoint has no tensor {key!r}")
        return self.checkpoint[key]

    def runner(self, threads: int | None = None) -> TorchRunner:
        def call(*args: torch.Tensor) -> Any:
            return self.module(*args)

        return TorchRunner(call, list(self.manifest.get("inputs", [])), list(self.manifest.get("output_names", [])),
                           threads)  # fmt: skip


class _NoInt8:
    """The generated module's flavor: FP8 types are emulated by the module itself; it holds no int8 unit."""

    name = "gaudi_fp8"

    def activation(self, x: torch.Tensor, q: QuantType) -> torch.Tensor:
        raise SerializationError(f"the {BACKEND} emulation has no int8 activation ({q.dtype})")

    def store_weight(self, w: np.ndarray, q: QuantType) -> torch.Tensor:
        raise SerializationError(f"the {BACKEND} emulation has no int8 weight ({q.dtype})")

    def weight(self, stored: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, q: QuantType) -> torch.Tensor:
        raise SerializationError(f"the {BACKEND} emulation has no int8 weight ({q.dtype})")


def _with_scale(q: QuantType, scale: float) -> QuantType:
    return replace(q, scale=np.full(q.scale.shape, scale, dtype=np.float32))


def load_ir(folder: Path) -> Graph:
    """The artifact's legalized IR: the text, with its tensors from `quantir_ir.tensors`."""
    text_path = folder / IR_FILE
    try:
        text = text_path.read_text(encoding="utf-8")
    except OSError as e:
        raise SerializationError(f"{os.fspath(folder)!r} has no readable {IR_FILE}: {e}") from e
    side = folder / IR_TENSORS
    return parse(text, tensors=read_safetensors(side) if side.exists() else {}, filename=str(text_path))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors as the `safetensors` library reads them into torch (what INC's loader sees)."""
    try:
        from safetensors.torch import load_file
    except ImportError as e:
        raise SerializationError("reading a Gaudi FP8 checkpoint needs the safetensors package: pip install "
                                 "safetensors") from e  # fmt: skip
    try:
        return load_file(os.fspath(path))
    except Exception as e:  # safetensors raises its own error types for a bad file
        raise SerializationError(f"safetensors cannot read {os.fspath(path)!r}: {e}") from e


def load(artifact_dir: str | os.PathLike[str], *, threads: int | None = None) -> TorchRunner:
    """The checkpoint as a Runner: its FP8 modules emulated on the CPU (see the module docstring)."""
    return _Emulation(Path(artifact_dir)).runner(threads)


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().view(torch.uint8).numpy()


def _check_module(emu: _Emulation, e: Any, report: VerifyReport) -> bool:
    """The module's checkpoint tensors against the IR, bit for bit; each difference is a disagreement."""
    qx, qw = quant_type_of(e.node.inputs[0]), quant_type_of(e.weight)
    assert qx is not None and qw is not None and e.weight.const is not None
    w_ir = np.asarray(e.weight.const.numpy(), dtype=np.float32)
    ours = quantize(w_ir, qw)
    torch_cast = _bits(fp8_codes(torch.from_numpy(w_ir.copy()), qw))
    stored = _bits(emu.tensor(f"{e.module}.weight"))
    if e.transpose:
        ours, torch_cast = ours.T, torch_cast.T
    problems = []
    if stored.shape != ours.shape or not np.array_equal(stored, ours):
        problems.append("weight bytes differ from the IR's FP8 codes")
    if not np.array_equal(torch_cast, ours):
        problems.append(f"torch's float8 cast and quant_math differ on {int(np.sum(torch_cast != ours))} weight codes")
    scales = {"scale_input": qx.scale.reshape(()), "scale_weight": qw.scale,
              "quant_input.scale_inv": round_float(np.float32(1.0) / qx.scale.reshape(()), emu.hp)}  # fmt: skip
    for key, want in scales.items():
        got = emu.tensor(f"{e.module}.{key}").float().numpy()
        if got.shape != np.shape(want) or not np.array_equal(got, want):
            problems.append(f"{key} {got.reshape(-1)[:3].tolist()} is not the IR's {np.reshape(want, -1)[:3].tolist()}")
    report.disagreements += [f"{e.module}: {p}" for p in problems]
    return not problems


FP8_MAX_REL = 0.1
"""Output tolerance (of the largest magnitude) of the emulation against the ORT fake-quant reference. One E4M3 step is
1/16 to 1/8 of a value, and the float ops between quantizers (LayerNorm, GELU, Softmax) differ between torch and ONNX
Runtime by float rounding, which moves the odd activation across a rounding boundary by a whole FP8 step. Measured on
all-MiniLM-L6-v2 (48 held-out sentences): 0.052 max relative, embedding cosine emulation vs reference 0.9993 (the
per-tensor casts themselves agree bit for bit, checked on every activation); digits: 1e-6."""


def verify_gaudi_fp8(artifact_dir: str | os.PathLike[str], inputs: dict[str, np.ndarray], *, max_lsb: float = 1.0,
                     max_rel: float = FP8_MAX_REL) -> VerifyReport:  # fmt: skip
    """Check the checkpoint against the IR and run its CPU emulation against the fake-quant reference."""
    folder = Path(artifact_dir)
    emu = _Emulation(folder)
    runner = emu.runner()
    report = VerifyReport(backend=BACKEND, artifact=folder, runtime=RUNTIME, runner=runner)
    report.notes.append(EMULATION_NOTE)
    for e in emu.entries:
        ok = _check_module(emu, e, report)
        q = quant_type_of(e.weight)
        report.nodes.append(KernelRow(e.name, e.node.op_type, e.module, KERNELS[e.node.op_type],
                                      "emulated (torch float8 casts)", ok, str(q.dtype) if q else "",
                                      "checkpoint bytes = IR codes" if ok else "differs from the IR"))  # fmt: skip
    report.kernels = {"FP8 modules in the checkpoint (emulated)": len(emu.entries)}
    mismatched: dict[str, int] = {}

    def observe(name: str, x: torch.Tensor, q: QuantType) -> None:
        theirs = _bits(fp8_codes(x.detach(), q))
        ours = quantize(x.detach().numpy(), q)
        if not np.array_equal(theirs, ours):
            mismatched[name] = int(np.sum(theirs != ours))

    emu.module.observer = observe
    try:
        compare_outputs(report, folder, emu.manifest, runner, inputs, max_lsb, max_rel, RUNTIME)
    finally:
        emu.module.observer = None
    for name, n in mismatched.items():
        report.disagreements.append(f"%{name}: torch's float8 cast and quant_math differ on {n} activation codes")
    report.notes.append(f"{len(emu.entries)} module(s): weights, scales and every FP8 activation on these inputs are "
                        f"bit-exact between torch's float8 casts and the IR" if report.ok else
                        "the checkpoint or the emulation differs from the IR (see the disagreements)")  # fmt: skip
    return report
