"""Legalize a quantized IR graph for INC's Gaudi FP8: a Conv/Gemm/MatMul runs FP8 when its activation input and its
constant weight carry FP8 types with zero point 0 (per-tensor input; per-tensor or per-output-channel weight). Every
other quant type is removed with its reason (Gaudi's patched Linear/Conv2d dequantize in the GEMM and write hp_dtype,
so an output, a bias or an int8 type has no meaning in the checkpoint)."""

from __future__ import annotations

import numpy as np

from quantir.backends.contract import LegalizeReport, OpDecision, ValueChange
from quantir.backends.gaudi_fp8.capabilities import KERNELS, RUNTIME
from quantir.backends.legality import quant_type_of
from quantir.backends.onnx_proto.qdq import node_names, require_calibrated
from quantir.ir import DType, GranularityKind, Graph, Node, Value
from quantir.ir.traits import weight_inputs

__all__ = ["FP8_TYPES", "fp8_units", "legalize_gaudi_fp8", "unit_status"]

FP8_TYPES = frozenset({DType.F8E4M3FN, DType.F8E5M2})
"""The checkpoint's storage types: torch.float8_e4m3fn (INC's E4M3, on Gaudi2 too) and torch.float8_e5m2."""


def unit_status(node: Node) -> tuple[bool, str]:
    """Whether `node` is an FP8 module of the checkpoint, and why or why not."""
    if node.op_type not in KERNELS:
        return False, f"{node.op_type} is not a Linear or Conv2d; it runs in hp_dtype"
    x = node.inputs[0] if node.inputs else None
    w = node.inputs[1] if len(node.inputs) > 1 else None
    qx, qw = quant_type_of(x), quant_type_of(w)
    if w is None or not w.is_constant:
        return False, f"{node.op_type} has no constant weight; it runs in hp_dtype"
    if qx is None or qw is None:
        return False, f"{node.op_type} input or weight is not quantized; it runs in hp_dtype"
    for what, q in (("input", qx), ("weight", qw)):
        if q.dtype not in FP8_TYPES:
            return False, (f"{what} is {q.dtype}: Gaudi FP8 checkpoints hold float8_e4m3fn/float8_e5m2 only; convert "
                           "with FP8Config")  # fmt: skip
        if np.any(q.zero_point != 0):
            return False, f"{what} has a nonzero zero point; INC's FP8 is symmetric"
    if qx.granularity.kind is not GranularityKind.PER_TENSOR:
        return False, "the input is quantized per channel; INC's static FP8 input scale is per tensor"
    axis = weight_inputs(node).get(1)
    if qw.granularity.kind is GranularityKind.PER_GROUP or (
        qw.granularity.kind is GranularityKind.PER_CHANNEL and qw.granularity.axis != axis
    ):
        return False, "the weight is not quantized per tensor or per output channel"
    return True, f"{KERNELS[node.op_type]}: {qx.dtype} input and weight, output in hp_dtype"


def fp8_units(graph: Graph) -> list[Node]:
    return [n for n in graph.nodes if n.op_type in KERNELS and unit_status(n)[0]]


def _needed(v: Value, status: dict[Node, tuple[bool, str]]) -> bool:
    """An FP8 module reads `v` as its input (slot 0) or weight (slot 1)."""
    return any(u.node in status and status[u.node][0] and u.idx in (0, 1) for u in v.uses())


def legalize_gaudi_fp8(graph: Graph) -> LegalizeReport:
    require_calibrated(graph)
    report = LegalizeReport(opset_before=graph.opset, opset_after=graph.opset)
    status = {n: unit_status(n) for n in graph.nodes if n.op_type in KERNELS}
    for v in list(graph.values()):
        if quant_type_of(v) is None or _needed(v, status):
            continue
        v.quant = None
        reader = next((status[u.node][1] for u in v.uses() if u.node in status), None)
        why = reader or f"{RUNTIME} keeps it in hp_dtype: only patched Linear/Conv2d inputs and weights are FP8"
        report.removed.append(ValueChange(v.name, why))
    for node, name in zip(graph.nodes, node_names(graph), strict=True):
        module = node.source.module if node.source is not None else ""
        quantized, reason = status.get(node, (False, f"{node.op_type} runs in hp_dtype"))
        report.nodes.append(OpDecision(name, node.op_type, module, quantized, reason))
    return report
