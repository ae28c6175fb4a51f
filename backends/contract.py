"""The backend contract: what every backend folder provides, and the record types all backends share.

A backend is one `Backend` value (in `<backend>/backend.py`, found through `quantir.backends.registry`):

- `name`, `aliases`, `runtime` (the runtime's name as users know it) and `convention` (the name of the
  `quantir.compiler.qparams.Convention` whose formulas turn its ranges into scales);
- `capabilities`: one `CapabilityTable` (the same dataclass shape for every backend) that annotation reads;
- `legalize(graph) -> LegalizeReport`: mutates a clone of the quantized IR until only what the runtime runs in low
  precision stays quantized (run as the registered pass `legalize{backend=...}`, whose postcondition is checked);
- `emit(graph, dir, manifest=...)`: writes the artifact folder atomically;
- `verify(dir, inputs) -> VerifyReport`: loads the artifact in its runtime and says what really runs in low
  precision and whether it computes what the IR's fake-quant semantics compute;
- `load(dir) -> Runner`: the artifact as a callable in its own runtime (and `load_float(model.onnx)`, the float
  baseline in that runtime).

Backends never optimize and never compute scales: they emit what the IR decided (ARCHITECTURE.md §5).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from quantir.ir import Graph, QuantSpec
from quantir.ir.traits import UnitKind

__all__ = [
    "DYNAMIC_MAX_REL",
    "HEAVY_OPS",
    "Backend",
    "CapabilityTable",
    "KernelRow",
    "LegalizeReport",
    "OpCapability",
    "OpDecision",
    "OutputRow",
    "Runner",
    "ValueChange",
    "VerifyReport",
    "WeightOnlyCapability",
    "check_outputs",
    "compare_output",
    "format_table",
    "lazy",
]

HEAVY_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
"""The ops whose low-precision kernels int8 coverage counts."""

DYNAMIC_MAX_REL = 0.15
"""Output tolerance (of the largest magnitude) of an artifact whose activations are quantized per batch at run time,
against its reference: a scale that follows the batch turns small float differences upstream into whole steps.
Measured on all-MiniLM-L6-v2 (64 sentences): ORT's DynamicQuantizeMatMul model at optimization level none vs all
differs by 0.079 max relative, mean cosine 0.9992, both 0.9939 from FP32; OpenVINO's dynamic quantization is
compared with a reference whose activations stay float."""


# ---- capabilities ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpCapability:
    """How one op type takes part in a low-precision region of a runtime."""

    kind: UnitKind
    kernel: str = ""
    """The runtime's low-precision kernel for the op (for reports)."""
    inputs: tuple[int, ...] | None = (0,)
    """Input slots that must be quantized for the kernel; None means every input."""
    float_output_kernel: str | None = None
    """The kernel when the output is not quantized (None: the output quantizer is required)."""
    min_opset: int = 10
    weight_inputs_only: bool = False
    """Quantized only when its weight inputs are constants (e.g. activation x activation MatMul is not)."""
    float_reason: str | None = None
    """Why the op stays float where it does (shown in reports)."""


@dataclass(frozen=True, slots=True)
class CapabilityTable:
    """Op type -> `OpCapability` for one runtime; every op not in it runs float there."""

    runtime: str
    ops: Mapping[str, OpCapability]
    units: Mapping[str, UnitKind] = field(init=False)
    """Op type -> its unit kind (what annotation reads)."""
    weight_inputs_only: frozenset[str] = field(init=False)
    float_output_ok: frozenset[str] = field(init=False)
    """Compute ops that still run a low-precision kernel without an output quantizer."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "units", {op: cap.kind for op, cap in self.ops.items()})
        object.__setattr__(self, "weight_inputs_only",
                           frozenset(op for op, cap in self.ops.items() if cap.weight_inputs_only))  # fmt: skip
        object.__setattr__(
            self,
            "float_output_ok",
            frozenset(op for op, cap in self.ops.items() if cap.float_output_kernel is not None),
        )

    def get(self, op_type: str) -> OpCapability | None:
        return self.ops.get(op_type)

    def kind(self, op_type: str) -> UnitKind | None:
        cap = self.ops.get(op_type)
        return None if cap is None else cap.kind

    def float_reason(self, op_type: str) -> str:
        cap = self.ops.get(op_type)
        if cap is not None and cap.float_reason:
            return cap.float_reason
        return f"{op_type} has no integer kernel in {self.runtime}"


@dataclass(frozen=True, slots=True)
class WeightOnlyCapability:
    """How a runtime runs weight-only quantized ops: float activations times low-bit weights that the kernel
    dequantizes group by group along the reduction axis."""

    kernel: str
    """The runtime's kernel (for reports): `MatMulNBits`, `FullyConnected with compressed weights`."""
    ops: frozenset[str]
    """IR op types whose constant weight it runs in low bits."""
    bits: tuple[int, ...]
    """Weight widths it has kernels for."""

    def bits_problem(self, bits: int, backend: str) -> str | None:
        if bits in self.bits:
            return None
        widths = " or ".join(str(b) for b in self.bits)
        return f"{backend} ({self.kernel}) runs weight-only kernels of {widths} bits, not {bits}; choose bits={widths}"


# ---- decisions and the legalize report ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpDecision:
    """Whether one op runs in low precision, and why or why not: the one decision record of quantir."""

    name: str
    op_type: str
    module: str | None
    quantized: bool
    reason: str

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "op_type": self.op_type, "module": self.module, "quantized": self.quantized,
                "reason": self.reason}  # fmt: skip


@dataclass(frozen=True, slots=True)
class ValueChange:
    """A quant type legalization removed or changed, and why."""

    value: str
    reason: str


def format_table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    """Left-aligned columns (the last one unpadded)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([*(c.ljust(w) for c, w in zip(r[:-1], widths)), r[-1]]).rstrip() for r in rows]


@dataclass(slots=True)
class LegalizeReport:
    """Per node: quantized or not, and why; per quant type removed or changed: why; and the opset before/after."""

    nodes: list[OpDecision] = field(default_factory=list)
    removed: list[ValueChange] = field(default_factory=list)
    changed: list[ValueChange] = field(default_factory=list)
    opset_before: int = 0
    opset_after: int = 0

    def __getitem__(self, node: str) -> OpDecision:
        for d in self.nodes:
            if d.name == node:
                return d
        raise KeyError(f"no node {node!r} in the legalize report")

    def removed_reason(self, value: str) -> str | None:
        return next((d.reason for d in self.removed if d.value == value), None)

    @property
    def unchanged(self) -> bool:
        """Legalization removed and changed nothing (a legal graph legalizes to itself)."""
        return not self.removed and not self.changed

    def to_json(self) -> dict[str, Any]:
        return {
            "opset_before": self.opset_before,
            "opset_after": self.opset_after,
            "nodes": [
                {"node": d.name, "op_type": d.op_type, "module": d.module or "", "quantized": d.quantized,
                 "reason": d.reason}
                for d in self.nodes
            ],
            "removed": [{"value": d.value, "reason": d.reason} for d in self.removed],
            "changed": [{"value": d.value, "reason": d.reason} for d in self.changed],
        }  # fmt: skip

    def format(self) -> str:
        rows: list[tuple[str, ...]] = [("node", "op", "module", "quantized", "reason")]
        rows += [(d.name, d.op_type, d.module or "", "yes" if d.quantized else "no", d.reason) for d in self.nodes]
        lines = format_table(rows)
        if self.removed:
            lines += ["", "quantization removed:", *(f"  %{d.value}: {d.reason}" for d in self.removed)]
        if self.changed:
            lines += ["", "quantization changed:", *(f"  %{d.value}: {d.reason}" for d in self.changed)]
        if self.opset_after != self.opset_before:
            lines.append(f"opset raised from {self.opset_before} to {self.opset_after}")
        return "\n".join(lines)


# ---- running and verifying an artifact ------------------------------------------------------------------------------


class Runner(Protocol):
    """An artifact loaded in its runtime: named float inputs in, outputs in model order out."""

    input_names: list[str]
    output_names: list[str]

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...


@dataclass(frozen=True, slots=True)
class KernelRow:
    """One quantized IR node and what the runtime made of it."""

    name: str
    op_type: str
    module: str
    expected: str
    """The kernel legalization expected ("" when the backend names none)."""
    actual: str
    """The runtime's kernel or layer for the node ("" when the runtime removed or renamed it)."""
    int8: bool
    """Whether it runs a low-precision kernel."""
    precision: str = ""
    """The runtime's precision for the node, where it reports one (OpenVINO's runtimePrecision)."""
    detail: str = ""
    """Anything else the runtime reports (OpenVINO's primitiveType)."""


@dataclass(frozen=True, slots=True)
class OutputRow:
    """The artifact in its runtime vs the IR's fake-quant reference, for one graph output."""

    name: str
    max_abs: float
    lsb: float | None
    """max_abs in units of the output's quantization step, when the output is quantized."""
    rel: float | None
    """max_abs relative to the reference's largest magnitude, when it is not."""
    ok: bool
    vs_float: float | None = None
    """Max abs difference from the float model, when one was given."""


def _opt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


@dataclass(slots=True)
class VerifyReport:
    """What a runtime made of an artifact: per-node kernels, coverage, per-output agreement (every backend)."""

    backend: str
    artifact: Path
    runtime: str = ""
    nodes: list[KernelRow] = field(default_factory=list)
    outputs: list[OutputRow] = field(default_factory=list)
    kernels: dict[str, int] = field(default_factory=dict)
    """Low-precision kernels in the runtime's graph, by name."""
    leftover: dict[str, int] = field(default_factory=dict)
    """Float quantize/dequantize and float heavy ops left in the runtime's graph, where the runtime shows them."""
    disagreements: list[str] = field(default_factory=list)
    unmatched_kernels: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What the emitter or runtime changed that lost no int8 kernel by itself (e.g. merged FakeQuantize)."""
    """Low-precision kernels whose name matches no quantized IR node."""
    runner: Runner | None = field(default=None, repr=False, compare=False)

    @property
    def heavy(self) -> list[KernelRow]:
        return [r for r in self.nodes if r.op_type in HEAVY_OPS]

    @property
    def coverage(self) -> float | None:
        """Share of quantized Conv/ConvTranspose/MatMul/Gemm that run a low-precision kernel (None: none quantized)."""
        heavy = self.heavy
        return sum(r.int8 for r in heavy) / len(heavy) if heavy else None

    @property
    def missed(self) -> list[KernelRow]:
        """Quantized IR nodes the runtime did not run in low precision."""
        return [r for r in self.nodes if not r.int8]

    @property
    def ok(self) -> bool:
        """Every quantized unit runs in low precision, no kernel on a node the IR left float, outputs agree."""
        return (
            not self.disagreements
            and not self.missed
            and not self.unmatched_kernels
            and all(o.ok for o in self.outputs)
        )

    def coverage_text(self) -> str:
        """`100% (2/2 Conv/MatMul/Gemm)`, or `n/a (no quantized Conv/MatMul/Gemm)`."""
        coverage, heavy = self.coverage, self.heavy
        if coverage is None:
            return "n/a (no quantized Conv/MatMul/Gemm)"
        return f"{coverage:.0%} ({sum(r.int8 for r in heavy)}/{len(heavy)} Conv/MatMul/Gemm)"

    def summary_line(self) -> str:
        """One line: coverage, kernels, worst output difference in LSB, verdict."""
        kernels = ", ".join(f"{k}={n}" for k, n in sorted(self.kernels.items())) or "no integer kernels"
        lsb = [o.lsb for o in self.outputs if o.lsb is not None]
        worst = f"; fused vs unfused <= {max(lsb):.3g} LSB" if lsb else ""
        return f"coverage {self.coverage_text()}; {kernels}{worst}; {'ok' if self.ok else 'NOT OK'}"

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the artifact in its runtime on `inputs` (outputs in model order)."""
        if self.runner is None:
            raise RuntimeError(f"the verify report of {os.fspath(self.artifact)!r} has no runner")
        return self.runner(inputs)

    def format(self) -> str:
        lines = [f"{self.runtime or self.backend}: int8 coverage {self.coverage_text()}"]
        if self.kernels:
            lines.append("integer kernels: " + ", ".join(f"{k}={n}" for k, n in sorted(self.kernels.items())))
        if self.leftover:
            lines.append("left unfused:    " + ", ".join(f"{k}={n}" for k, n in sorted(self.leftover.items())))
        lines += [f"note: {n}" for n in self.notes]
        rows: list[tuple[str, ...]] = [("node", "op", "module", "expected", "runtime", "precision", "int8")]
        rows += [(r.name, r.op_type, r.module, r.expected or "-", " ".join(filter(None, (r.actual, r.detail))) or "-",
                  r.precision or "-", "yes" if r.int8 else "NO") for r in self.nodes]  # fmt: skip
        lines += ["", *format_table(rows)]
        rows = [("output", "max |runtime - reference|", "in LSB", "relative", "vs float", "ok")]
        rows += [(o.name, f"{o.max_abs:.3g}", _opt(o.lsb), _opt(o.rel), _opt(o.vs_float), "yes" if o.ok else "NO")
                 for o in self.outputs]  # fmt: skip
        lines += ["", *format_table(rows)]
        lines += [f"disagreement: {d}" for d in self.disagreements]
        if self.unmatched_kernels:
            lines.append("kernels not matched to an IR node: " + ", ".join(self.unmatched_kernels))
        return "\n".join(lines)


def compare_output(name: str, got: np.ndarray, ref: np.ndarray, info: Mapping[str, Any], max_lsb: float,
                   max_rel: float, floats: np.ndarray | None = None) -> OutputRow:  # fmt: skip
    """The runtime's output vs the reference: within `max_lsb` output steps when the manifest's `outputs` entry
    `info` says it is quantized, else within `max_rel` of the reference's largest magnitude."""
    diff = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)), initial=0.0))
    vs_float = None if floats is None else float(np.max(np.abs(got.astype(np.float64) - floats), initial=0.0))
    if info.get("quantized"):
        lsb = diff / min(float(s) for s in info["scale"])
        return OutputRow(name, diff, lsb, None, lsb <= max_lsb * (1 + 1e-5), vs_float)  # a step, rounded in float32
    rel = diff / max(float(np.max(np.abs(ref), initial=0.0)), float(np.finfo(np.float32).tiny))
    return OutputRow(name, diff, None, rel, rel <= max_rel, vs_float)


def check_outputs(report: VerifyReport, runtime: str, names: Sequence[str], got: Sequence[np.ndarray],
                  reference: Mapping[str, np.ndarray], infos: Mapping[str, Any], max_lsb: float,
                  max_rel: float) -> None:  # fmt: skip
    """Compare an artifact's outputs (`names`, `got`) with its fake-quant `reference` outputs (`compare_output`),
    appending a row per output to `report` and a disagreement for each that is off."""
    for name, out in zip(names, got, strict=True):
        row = compare_output(name, out, reference[name], infos.get(name, {}), max_lsb, max_rel)
        report.outputs.append(row)
        if not row.ok:
            what = f"{row.lsb:.3g} LSB" if row.lsb is not None else f"{row.rel:.3g} relative"
            report.disagreements.append(f"output {name!r}: {runtime} and the fake-quant reference differ by {what}")


# ---- the backend ----------------------------------------------------------------------------------------------------


def lazy(module: str, name: str) -> Callable[..., Any]:
    """`module.name`, imported on first call: a backend's emit/verify/load that need its runtime package cost nothing
    until used."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.target = f"{module}:{name}"  # type: ignore[attr-defined]  # what a child process imports (probe.py)
    call.__doc__ = f"`{module}.{name}`, imported on first call."
    return call


@dataclass(frozen=True, slots=True)
class Backend:
    """Everything quantir knows about one target; compiler/ and tools/ reach backends only through this."""

    name: str
    runtime: str
    convention: str
    """A `quantir.compiler.qparams.Convention` name, lowercase ("ort", "openvino")."""
    capabilities: CapabilityTable
    legalize: Callable[[Graph], LegalizeReport]
    emit: Callable[..., Path]
    """`emit(graph, out_dir, *, manifest) -> Path`."""
    verify: Callable[..., VerifyReport]
    """`verify(artifact_dir, inputs, **options) -> VerifyReport`."""
    load: Callable[..., Runner]
    """`load(artifact_dir, *, threads=None) -> Runner`; `threads` bounds the runtime's intra-op threads."""
    aliases: tuple[str, ...] = ()
    description: str = ""
    runtime_package: str = ""
    """The runtime's Python distribution ("openvino"), whose version errors and reports name."""
    load_float: Callable[..., Runner] | None = None
    """`load_float(onnx_path, *, threads=None) -> Runner`: a float ONNX model in the same runtime, the baseline of
    speed and accuracy figures (None: the runtime cannot run one)."""
    reference_model: Callable[[Path], Path | None] = lambda _dir: None
    """The artifact's QDQ ONNX model of its legalized graph (the IR's fake-quant semantics), if it writes one."""
    weight_rule: QuantSpec | None = None
    """The weight type retargeting gives constant Conv/MatMul/Gemm weights (the axis becomes each weight's
    output-channel axis); None: the backend takes any weight type."""
    int32_bias: bool = False
    """Its fused kernels need the bias as int32 at s_x·s_w (a float source bias is quantized when retargeting)."""
    weight_only: WeightOnlyCapability | None = None
    """Its weight-only kernels (None: it runs none; weight-only configs are refused for it)."""
    fp8_only: bool = False
    """Its artifacts hold FP8 only (an int8 IR has nothing for it): `--to all` and the demo give it an FP8
    conversion."""
    folds_constant_math: str | None = None
    """Why its converter folds dequantized constants that no Conv/MatMul/Gemm reads as weight (None: it does not)."""

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)
