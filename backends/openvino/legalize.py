"""Legalize a quantized IR graph for OpenVINO's CPU plugin (ARCHITECTURE.md §5, nncf-and-openvino.md §1).

Postcondition: every quantized Conv/ConvTranspose/MatMul/Gemm has a per-tensor 8-bit activation quantizer in front
and symmetric (zero point 0) int8 weights per output channel or per tensor, which LPT runs as an int8 kernel;
activation x activation MatMuls are float (FP32 on this CPU); Concat inputs and output share one range. Every op
left float and every quant type removed or changed has a reason. Pure function of the graph (no runtime called).
A FakeQuantize anywhere else is legal in OpenVINO (LPT moves or fuses it), so other quant types are kept.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from quantir.backends.onnx_proto.qdq import MIN_OPSET_PER_AXIS, node_names, require_calibrated
from quantir.backends.openvino.capabilities import (
    ACT_ACT_MATMUL,
    ACTIVATION_DTYPES,
    FLOAT_OUTPUT_OK,
    RUNTIME,
    UNITS,
    WEIGHT_DTYPES,
)
from quantir.ir import GranularityKind, Graph, Node, PassError, QuantType, Value
from quantir.ir.traits import UnitKind, weight_inputs

__all__ = ["LegalizeReport", "OpRow", "legalize_for_openvino", "quantized_compute_units"]

INT8_OPS = frozenset(op for op in FLOAT_OUTPUT_OK)
"""The heavy ops whose int8 kernel coverage `verify_openvino` measures."""


@dataclass(frozen=True, slots=True)
class OpRow:
    """One node: whether it runs in int8 on OpenVINO's CPU plugin, and why or why not."""

    node: str
    op_type: str
    module: str
    quantized: bool
    reason: str


@dataclass(slots=True)
class LegalizeReport:
    """Per node its decision; per quant type removed or changed, why (`value` -> reason)."""

    nodes: list[OpRow] = field(default_factory=list)
    removed: dict[str, str] = field(default_factory=dict)
    unified: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, node: str) -> OpRow:
        found = [r for r in self.nodes if r.node == node]
        if not found:
            raise KeyError(f"no node {node!r} in the OpenVINO legalize report")
        return found[0]

    def to_json(self) -> dict[str, Any]:
        return {"nodes": [dataclasses.asdict(r) for r in self.nodes], "removed": dict(self.removed),
                "unified": dict(self.unified)}  # fmt: skip

    def format(self) -> str:
        lines = [f"{r.node} ({r.op_type}{', ' + r.module if r.module else ''}): "
                 f"{'int8' if r.quantized else 'float'} - {r.reason}" for r in self.nodes]  # fmt: skip
        lines += [f"%{v}: quantization removed - {why}" for v, why in self.removed.items()]
        lines += [f"%{v}: range unified - {why}" for v, why in self.unified.items()]
        return "\n".join(lines)


def _qtype(v: Value | None) -> QuantType | None:
    return v.quant if v is not None and isinstance(v.quant, QuantType) else None


def _activation_problem(v: Value, q: QuantType, op: str) -> str | None:
    if q.dtype not in ACTIVATION_DTYPES:
        return f"activation %{v.name} is {q.dtype}; {RUNTIME} runs {op} in int8 only behind an 8-bit FakeQuantize"
    if q.granularity.kind is not GranularityKind.PER_TENSOR:
        return f"activation %{v.name} is quantized {q.granularity.kind.value}; per-channel activations run FP32"
    return None


def _weight_problem(w: Value, q: QuantType, axis: int, op: str) -> str | None:
    if q.dtype not in WEIGHT_DTYPES:
        return f"weight %{w.name} is {q.dtype}; {RUNTIME} runs {op} in int8 only with i8 weights"
    if np.any(q.zero_point != 0):
        return f"weight %{w.name} is asymmetric (zero point != 0); asymmetric weights run FP32 (measured)"
    g = q.granularity
    if g.kind is GranularityKind.PER_GROUP or (g.kind is GranularityKind.PER_CHANNEL and g.axis != axis):
        return f"weight %{w.name} is quantized {g.kind.value} on axis {g.axis}, not per output channel ({axis})"
    return None


def _compute_status(node: Node) -> tuple[bool, str]:
    """Whether a Conv/MatMul/Gemm runs an int8 kernel given its current quant types, and why."""
    op = node.op_type
    weights = {i: ax for i, ax in weight_inputs(node).items() if (w := node.inputs[i]) is not None and w.is_constant}
    if not weights:
        return False, ACT_ACT_MATMUL if op == "MatMul" else f"{op} has no constant weight"
    x = node.inputs[0]
    qx = _qtype(x)
    if x is None or qx is None:
        return False, f"input of {op} is not quantized; without a FakeQuantize in front {RUNTIME} runs it FP32"
    if (problem := _activation_problem(x, qx, op)) is not None:
        return False, problem
    for i, axis in weights.items():
        w = node.inputs[i]
        assert w is not None
        qw = _qtype(w)
        if qw is None:
            return False, f"weight %{w.name} of {op} is not quantized"
        if (problem := _weight_problem(w, qw, axis, op)) is not None:
            return False, problem
    return True, f"runs int8 ({qx.dtype} activations x i8 symmetric weights)"


def _unify_concat(graph: Graph, report: LegalizeReport) -> None:
    """Give every Concat's quantized inputs and output one per-tensor range (min of mins, max of maxes)."""
    for node in graph.nodes:
        if node.op_type != "Concat":
            continue
        values = [v for v in [*node.inputs, *node.outputs] if v is not None]
        qs = [_qtype(v) for v in values]
        if any(q is None or q.granularity.kind is not GranularityKind.PER_TENSOR for q in qs):
            continue
        quants = [q for q in qs if q is not None]
        if len({q.dtype for q in quants}) > 1 or all(_same(quants[0], q) for q in quants):
            continue
        lo = min(float(q.scale) * (q.qmin - float(q.zero_point)) for q in quants)
        hi = max(float(q.scale) * (q.qmax - float(q.zero_point)) for q in quants)
        first = quants[0]
        scale = np.float32((hi - lo) / (first.qmax - first.qmin))
        zp = np.clip(np.round(first.qmin - lo / scale), first.qmin, first.qmax)
        merged = dataclasses.replace(first, scale=np.asarray(scale, np.float32),
                                     zero_point=np.asarray(zp, first.zero_point.dtype))  # fmt: skip
        for v in values:
            v.quant = merged
            report.unified[v.name] = f"Concat {node.name or node.op_type} shares one range [{lo:.4g}, {hi:.4g}]"


def _same(a: QuantType, b: QuantType) -> bool:
    return np.array_equal(a.scale, b.scale) and np.array_equal(a.zero_point, b.zero_point)


def _remove_unread(graph: Graph, status: dict[Node, tuple[bool, str]], report: LegalizeReport) -> None:
    """Drop quant types no int8 region needs: read only by float heavy ops (directly or through data movement)."""
    changed = True
    while changed:
        changed = False
        for v in graph.values():
            q = _qtype(v)
            if q is None or graph.is_output(v) or not v.uses():
                continue
            if v.is_constant:
                readers_float = all(u.node in status and not status[u.node][0] for u in v.uses())
            else:
                readers_float = all(_float_reader(u.node, status) for u in v.uses())
            if readers_float:
                v.quant = None
                reason = next(status[u.node][1] for u in v.uses() if u.node in status) if any(
                    u.node in status for u in v.uses()) else "only float ops read it"  # fmt: skip
                report.removed[v.name] = f"read only by float ops ({reason})"
                changed = True


def _float_reader(node: Node, status: dict[Node, tuple[bool, str]]) -> bool:
    if node in status:
        return not status[node][0]
    if UNITS.get(node.op_type) is UnitKind.DROP:
        outs = [o for o in node.outputs if o is not None]
        return bool(outs) and all(_qtype(o) is None and o.uses() for o in outs)
    return False


def legalize_for_openvino(graph: Graph) -> LegalizeReport:
    """Make `graph` (mutated) what OpenVINO's CPU plugin runs in int8; every float op and change gets a reason.

    Raises `PassError` for uncalibrated QuantSpecs and for per-channel weights in a graph below opset 13 (the QDQ
    lowering the emitter feeds to OpenVINO's ONNX frontend needs the `axis` attribute).
    """
    require_calibrated(graph)
    report = LegalizeReport()
    _unify_concat(graph, report)
    status = {n: _compute_status(n) for n in graph.nodes if n.op_type in INT8_OPS}
    _remove_unread(graph, status, report)
    per_axis = any(q.granularity.kind is not GranularityKind.PER_TENSOR
                   for v in graph.values() if (q := _qtype(v)) is not None)  # fmt: skip
    if per_axis and graph.opset < MIN_OPSET_PER_AXIS:
        raise PassError(f"per-channel quantization needs opset {MIN_OPSET_PER_AXIS} in the QDQ model OpenVINO reads; "
                        f"the graph is opset {graph.opset}: convert the float model to opset 13 first")  # fmt: skip
    for node, name in zip(graph.nodes, node_names(graph)):
        module = node.source.module if node.source is not None else ""
        if node in status:
            quantized, reason = status[node]
        else:
            quantized, reason = _other_status(node)
        report.nodes.append(OpRow(name, node.op_type, module, quantized, reason))
    return report


def _other_status(node: Node) -> tuple[bool, str]:
    if not any(_qtype(v) is not None for v in [*node.inputs, *node.outputs]):
        return False, f"{node.op_type} has no quantized input or output"
    kind = UNITS.get(node.op_type)
    if kind is None:
        return False, f"{node.op_type} runs float in OpenVINO; it only reads or writes FakeQuantized values"
    if kind is UnitKind.ABSORBED:
        return True, f"{node.op_type} fused into the int8 kernel before it (requantization)"
    if kind is UnitKind.DROP:
        return True, f"{node.op_type} moves u8 data (LPT propagates the dequantization through it)"
    return True, f"LPT moves the dequantization through {node.op_type}"


def quantized_compute_units(graph: Graph) -> list[Node]:
    """The Conv/MatMul/Gemm nodes of a legalized graph that should run an int8 kernel."""
    return [n for n in graph.nodes if n.op_type in INT8_OPS and _compute_status(n)[0]]
