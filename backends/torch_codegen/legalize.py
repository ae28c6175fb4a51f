"""Legalize a quantized IR graph for torch's int8 lowerings (IPEX's JIT fuser and Inductor's oneDNN passes), which
the `ipex` and `pt2e` backends share (ipex-and-pt2e.md §1, §4).

Postcondition: every quantized Conv/Gemm/MatMul has a constant weight in symmetric int8 (zero point 0) per output
channel or per tensor and a per-tensor 8-bit activation quantizer in front: the `dequantize(x), dequantize(w) ->
conv/linear` pattern both lowerings fuse into an int8 kernel. Quant types nothing int8 reads are removed (torch has
no int8 Add, Softmax or LayerNorm in these recipes, so a fake-quant there would only add rounding), and so are int32
biases: torch's kernels take the bias in float. Every op left float and every removal has a reason.
"""

from __future__ import annotations

from quantir.backends.contract import CapabilityTable, LegalizeReport, OpDecision, ValueChange
from quantir.backends.legality import (
    EIGHT_BIT,
    activation_problem,
    is_dynamic_input,
    is_grouped,
    quant_type_of,
    remove_unread,
    weight_problem,
)
from quantir.backends.onnx_proto.qdq import node_names, require_calibrated
from quantir.ir import DType, Graph, Node
from quantir.ir.traits import UnitKind, weight_inputs

__all__ = ["legalize_for_torch", "quantized_units"]

_HEAVY = frozenset({"Conv", "Gemm", "MatMul", "ConvTranspose"})


def _unit_status(node: Node, table: CapabilityTable) -> tuple[bool, str]:
    op, runtime = node.op_type, table.runtime
    cap = table.get(op)
    if cap is None:
        return False, table.float_reason(op)
    weights = {i: ax for i, ax in weight_inputs(node).items() if (w := node.inputs[i]) is not None and w.is_constant}
    if not weights:
        return False, cap.float_reason or f"{op} has no constant weight; {runtime} has no int8 kernel for it"
    x = node.inputs[0]
    w = node.inputs[1]
    assert w is not None
    qw = quant_type_of(w)
    if is_dynamic_input(x) or (qw is not None and is_grouped(qw) and quant_type_of(x) is None):
        return False, f"{runtime} has no weight-only or dynamic int8 kernel in this backend; {op} runs float"
    if op == "Conv" and (w.type is None or getattr(w.type, "rank", 0) not in (3, 4, 5)):
        return False, f"{op} weight %{w.name} is not 1-, 2- or 3-d; {runtime} runs it float"
    qx = quant_type_of(x)
    if x is None or qx is None:
        return False, f"input of {op} is not quantized; {runtime} runs it float"
    if (problem := activation_problem(x, qx, f"{runtime}'s int8 {op}", EIGHT_BIT)) is not None:
        return False, problem
    if qw is None:
        return False, f"weight %{w.name} of {op} is not quantized"
    if (problem := weight_problem(node, w, qw, weights[1], f"int8 {op}", runtime)) is not None:
        return False, problem
    return True, f"runs {cap.kernel} ({qx.dtype} activations x i8 symmetric weights)"


def quantized_units(graph: Graph, table: CapabilityTable) -> list[Node]:
    """The Conv/Gemm/MatMul nodes of a legalized graph that run an int8 kernel."""
    return [n for n in graph.nodes if n.op_type in _HEAVY and _unit_status(n, table)[0]]


def legalize_for_torch(graph: Graph, table: CapabilityTable) -> LegalizeReport:
    """Make `graph` (mutated) what torch's int8 lowering runs in int8; every float op and removal gets a reason."""
    require_calibrated(graph)
    report = LegalizeReport(opset_before=graph.opset, opset_after=graph.opset)
    for v in list(graph.values()):
        q = quant_type_of(v)
        if v.is_constant and q is not None and q.dtype is DType.I32:
            v.quant = None
            report.removed.append(ValueChange(v.name, f"{table.runtime} takes the bias in float (no int32 bias)"))
    status = {n: _unit_status(n, table) for n in graph.nodes if n.op_type in _HEAVY}
    remove_unread(graph, status, report, table, others_read_float=True)
    for node, name in zip(graph.nodes, node_names(graph), strict=True):
        module = node.source.module if node.source is not None else ""
        quantized, reason = status[node] if node in status else _other_status(node, table)
        report.nodes.append(OpDecision(name, node.op_type, module, quantized, reason))
    return report


def _other_status(node: Node, table: CapabilityTable) -> tuple[bool, str]:
    if not any(quant_type_of(v) is not None for v in [*node.inputs, *node.outputs]):
        return False, f"{node.op_type} has no quantized input or output"
    kind = table.kind(node.op_type)
    if kind is UnitKind.DROP:
        return True, f"{node.op_type} moves int8 data between quantizers"
    if kind is UnitKind.ABSORBED:
        return True, f"{node.op_type} fused into the int8 kernel before it (requantized output)"
    return False, f"{node.op_type} runs float in {table.runtime}; it only reads or writes fake-quantized values"
