"""Check an ONNX QDQ artifact in ONNX Runtime: which quantized nodes really became integer kernels, and whether
the fused model computes what the QDQ model (the IR's fake-quant semantics) computes.

ORT names a fused kernel after its target node (checked on ORT 1.32 for QLinearConv, QGemm, QLinearMatMul,
MatMulIntegerToFloat, QLinearAdd and QLinearConcat), and the emitter gives every node a unique name, so IR nodes
are found in the optimized model by name.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from quantir.backends.onnx_proto.runtime import OptLevel, ort_session
from quantir.backends.onnx_qdq.capabilities import COVERAGE_KERNELS, FUSED_KERNELS
from quantir.backends.onnx_qdq.emit import MODEL_FILE, read_manifest
from quantir.ir import SerializationError

__all__ = ["NodeRow", "OutputRow", "VerifyReport", "verify_onnx_qdq"]

_LEFTOVER = ("QuantizeLinear", "DequantizeLinear", "Conv", "MatMul", "Gemm")
"""Ops reported as left unfused: float Q/DQ kernels and float heavy ops."""


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One quantized compute node of the IR and what ORT made of it."""

    name: str
    op_type: str
    module: str
    expected: str
    """The kernel legalization expected (e.g. QLinearConv)."""
    actual: str
    """The op type of the node of that name in ORT's optimized model ("" when ORT removed or renamed it)."""

    @property
    def fused(self) -> bool:
        return self.actual in FUSED_KERNELS


@dataclass(frozen=True, slots=True)
class OutputRow:
    """Fused (ORT_ENABLE_ALL) vs unfused (ORT_DISABLE_ALL) results for one graph output."""

    name: str
    max_abs: float
    lsb: float | None
    """max_abs in units of the output's quantization step, when the output is quantized."""
    rel: float | None
    """max_abs relative to the unfused output's largest magnitude, when it is not."""
    vs_float: float | None = None
    """Max abs difference of the fused output from the float model, when one was given."""
    ok: bool = True


@dataclass(slots=True)
class VerifyReport:
    """What ORT made of an artifact: integer kernels, coverage, per-node fusion and per-output agreement."""

    model: Path | None = None
    """The artifact's model file, which `run` executes."""
    kernels: dict[str, int] = field(default_factory=dict)
    """Integer kernels in ORT's optimized model (ORT_ENABLE_EXTENDED), by op type."""
    leftover: dict[str, int] = field(default_factory=dict)
    """QuantizeLinear/DequantizeLinear and float Conv/MatMul/Gemm left in the optimized model."""
    coverage: float | None = None
    """Fused / quantized Conv, MatMul and Gemm nodes (None when the IR quantized none)."""
    nodes: list[NodeRow] = field(default_factory=list)
    outputs: list[OutputRow] = field(default_factory=list)
    disagreements: list[str] = field(default_factory=list)
    unmatched_kernels: list[str] = field(default_factory=list)
    """Integer kernels whose name matches no quantized IR node."""
    _session: Any = field(default=None, repr=False, compare=False)

    @property
    def missed(self) -> list[NodeRow]:
        """Quantized IR nodes ORT did not turn into an integer kernel."""
        return [r for r in self.nodes if not r.fused]

    @property
    def ok(self) -> bool:
        """No disagreement, every quantized unit fused, and no integer kernel on a node the IR left float."""
        return not self.disagreements and not self.missed and not self.unmatched_kernels

    def coverage_text(self) -> str:
        """`100% (2/2 Conv/MatMul/Gemm)`, or `n/a (no quantized Conv/MatMul/Gemm)`."""
        heavy = [r for r in self.nodes if r.op_type in COVERAGE_KERNELS]
        if self.coverage is None:
            return "n/a (no quantized Conv/MatMul/Gemm)"
        fused = sum(r.actual in COVERAGE_KERNELS[r.op_type] for r in heavy)
        return f"{self.coverage:.0%} ({fused}/{len(heavy)} Conv/MatMul/Gemm)"

    def summary_line(self) -> str:
        """One line: coverage, integer kernels, worst fused-vs-unfused difference, verdict."""
        kernels = ", ".join(f"{k}={n}" for k, n in sorted(self.kernels.items())) or "no integer kernels"
        lsb = [o.lsb for o in self.outputs if o.lsb is not None]
        worst = f"; fused vs unfused <= {max(lsb):.3g} LSB" if lsb else ""
        return f"coverage {self.coverage_text()}; {kernels}{worst}; {'ok' if self.ok else 'NOT OK'}"

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the artifact's model fused (ORT_ENABLE_ALL) on `inputs`; the session is created once."""
        if self.model is None:
            raise SerializationError("this report has no model to run")
        if self._session is None:
            self._session = _session(self.model, "all")
        return [np.asarray(a) for a in self._session.run(None, inputs)]

    def format(self) -> str:
        lines = [f"fusion coverage: {self.coverage_text()}"]
        lines.append("integer kernels: " + (", ".join(f"{k}={n}" for k, n in sorted(self.kernels.items())) or "none"))
        lines.append("left unfused:    " + (", ".join(f"{k}={n}" for k, n in sorted(self.leftover.items())) or "none"))
        rows = [("node", "op", "module", "expected", "in ORT", "fused")]
        rows += [
            (r.name, r.op_type, r.module, r.expected, r.actual or "-", "yes" if r.fused else "NO") for r in self.nodes
        ]
        lines += ["", *_table(rows)]
        rows = [("output", "max |fused-unfused|", "in LSB", "relative", "vs float", "ok")]
        rows += [(o.name, f"{o.max_abs:.3g}", _opt(o.lsb), _opt(o.rel), _opt(o.vs_float), "yes" if o.ok else "NO")
                 for o in self.outputs]  # fmt: skip
        lines += ["", *_table(rows)]
        lines += [f"disagreement: {d}" for d in self.disagreements]
        if self.unmatched_kernels:
            lines.append("kernels not matched to an IR node: " + ", ".join(self.unmatched_kernels))
        return "\n".join(lines)


def _opt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _session(model: Path, level: OptLevel, optimized: Path | None = None) -> Any:
    try:
        return ort_session(model, level=level, optimized_to=optimized)
    except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise SerializationError(f"ONNX Runtime cannot load {os.fspath(model)!r}: {e}") from e


def _optimized_ops(model: Path) -> dict[str, str]:
    """Node name -> op type in ORT's optimized model (graph level 2, where the QDQ fusions run)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "optimized.onnx"
        _session(model, "extended", path)
        opt = onnx.load(os.fspath(path), load_external_data=False)
    return {n.name or f"<unnamed {i}>": n.op_type for i, n in enumerate(opt.graph.node)}


def _compare(name: str, fused: np.ndarray, ref: np.ndarray, info: dict[str, Any], max_lsb: float, max_rel: float,
             floats: np.ndarray | None) -> OutputRow:  # fmt: skip
    diff = float(np.max(np.abs(fused.astype(np.float64) - ref.astype(np.float64)), initial=0.0))
    vs_float = None if floats is None else float(np.max(np.abs(fused - floats), initial=0.0))
    if info.get("quantized"):
        lsb = diff / min(float(s) for s in info["scale"])
        return OutputRow(name, diff, lsb, None, vs_float, lsb <= max_lsb)
    rel = diff / max(float(np.max(np.abs(ref), initial=0.0)), float(np.finfo(np.float32).tiny))
    return OutputRow(name, diff, None, rel, vs_float, rel <= max_rel)


def verify_onnx_qdq(
    artifact_dir: str | os.PathLike[str],
    inputs: dict[str, np.ndarray],
    *,
    float_model: str | os.PathLike[str] | None = None,
    max_lsb: float = 1.0,
    max_rel: float = 1e-2,
) -> VerifyReport:
    """Check the artifact's model with `onnx.checker` (full check), load it in ORT, count fused integer kernels, and
    run it fused and unfused on `inputs`.

    A quantized output disagrees when fused and unfused differ by more than `max_lsb` quantization steps; a float
    output when they differ by more than `max_rel` of the output's magnitude. `float_model` (a float ONNX file with
    the same inputs and outputs) adds each output's distance from float, for information.
    """
    folder = Path(artifact_dir)
    manifest = read_manifest(folder)
    if manifest is None:
        raise SerializationError(f"{os.fspath(folder)!r} is not a quantir artifact (no readable quantir.json)")
    model = folder / manifest.get("model", MODEL_FILE)
    try:
        onnx.checker.check_model(os.fspath(model), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise SerializationError(f"the QDQ model {os.fspath(model)!r} fails onnx.checker: {e}") from e
    ops = _optimized_ops(model)
    counts = Counter(ops.values())
    report = VerifyReport(
        model=model,
        kernels={k: n for k, n in counts.items() if k in FUSED_KERNELS},
        leftover={k: counts[k] for k in _LEFTOVER if counts[k]},
    )
    expected = {u["name"]: u for u in manifest.get("quantized_nodes", [])}
    for name, u in expected.items():
        report.nodes.append(NodeRow(name, u["op_type"], u.get("module", ""), u.get("kernel", ""), ops.get(name, "")))
    report.unmatched_kernels = sorted(n for n, op in ops.items() if op in FUSED_KERNELS and n not in expected)
    heavy = [r for r in report.nodes if r.op_type in COVERAGE_KERNELS]
    if heavy:
        report.coverage = sum(r.actual in COVERAGE_KERNELS[r.op_type] for r in heavy) / len(heavy)
    report._session = fused_sess = _session(model, "all")
    names = [o.name for o in fused_sess.get_outputs()]
    fused = fused_sess.run(names, inputs)
    ref = _session(model, "none").run(names, inputs)
    floats: list[Any] = [None] * len(names)
    if float_model is not None:
        floats = _session(Path(float_model), "all").run(names, inputs)
    infos = manifest.get("outputs", {})
    for name, a, b, f in zip(names, fused, ref, floats):
        row = _compare(name, np.asarray(a), np.asarray(b), infos.get(name, {}), max_lsb, max_rel, f)
        report.outputs.append(row)
        if not row.ok:
            what = f"{row.lsb:.3g} LSB" if row.lsb is not None else f"{row.rel:.3g} relative"
            report.disagreements.append(f"output {name!r}: fused and unfused ORT differ by {what}")
    return report
