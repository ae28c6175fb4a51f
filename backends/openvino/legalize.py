"""Legalize a quantized IR graph for OpenVINO's CPU plugin (ARCHITECTURE.md §5, nncf-and-openvino.md §1).

Postcondition: every quantized Conv/ConvTranspose/MatMul/Gemm has a per-tensor 8-bit activation quantizer in front
and symmetric (zero point 0) int8 weights per output channel or per tensor, which LPT runs as an int8 kernel;
activation x activation MatMuls are float (FP32 on this CPU). Every op left float and every quant type removed has a
reason. Pure function of the graph (no runtime called); Concat ranges are unified before, by the compiler
(`quantir.compiler.passes.unify_shared_ranges`), since that is scale math.
A FakeQuantize anywhere else is legal in OpenVINO (LPT moves or fuses it), so other quant types are kept.
"""

from __future__ import annotations

from quantir.backends.contract import LegalizeReport, OpDecision, ValueChange
from quantir.backends.legality import (
    activation_problem,
    fp8_unit_problem,
    is_dynamic_input,
    is_fp8,
    is_grouped,
    quant_type_of,
    remove_unread,
    weight_only_problem,
    weight_problem,
)
from quantir.backends.onnx_proto.opset_upgrade import upgrade_opset
from quantir.backends.onnx_proto.qdq import (
    MIN_OPSET_BLOCKED,
    MIN_OPSET_FP8,
    MIN_OPSET_PER_AXIS,
    node_names,
    require_calibrated,
)
from quantir.backends.openvino.capabilities import (
    ACT_ACT_MATMUL,
    ACTIVATION_DTYPES,
    RUNTIME,
    TABLE,
    WEIGHT_DTYPES,
    WEIGHT_ONLY,
)
from quantir.ir import GranularityKind, Graph, Node
from quantir.ir.traits import UnitKind, weight_inputs

__all__ = [
    "DYNAMIC_RUNTIME_CONFIG", "FP8_ORPHAN", "LegalizeReport", "has_dynamic_units", "is_fp8_unit", "is_weight_only_unit",
    "legalize_for_openvino", "quantized_compute_units",
]  # fmt: skip

DYNAMIC_RUNTIME_CONFIG = {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 32}
"""The CPU plugin property that quantizes a compressed-weight FullyConnected's activations per batch (groups of 32
along K, the plugin's own default), which the artifact's manifest carries for `load` to apply."""

INT8_OPS = TABLE.float_output_ok
"""The heavy ops whose int8 kernel coverage `verify_openvino` measures."""

_qtype = quant_type_of

FP8_ORPHAN = (
    "no FP8 Conv/MatMul/Gemm reads it: OpenVINO's CPU plugin has no FP8 kernels, so a FakeConvert here would only "
    "add rounding"
)


def is_fp8_unit(node: Node) -> bool:
    """A Conv/MatMul/Gemm with an FP8 input or weight (emulated on the CPU plugin when legal)."""
    x = node.inputs[0] if node.inputs else None
    w = node.inputs[1] if len(node.inputs) > 1 else None
    return is_fp8(_qtype(x)) or is_fp8(_qtype(w))


def _compute_status(node: Node) -> tuple[bool, str]:
    """Whether a Conv/MatMul/Gemm runs an int8 kernel given its current quant types, and why."""
    op = node.op_type
    weights = {i: ax for i, ax in weight_inputs(node).items() if (w := node.inputs[i]) is not None and w.is_constant}
    if not weights:
        return False, ACT_ACT_MATMUL if op == "MatMul" else f"{op} has no constant weight"
    x = node.inputs[0]
    qx = _qtype(x)
    w1 = node.inputs[1] if 1 in weights else None
    if is_dynamic_input(x) and w1 is not None and (qw := _qtype(w1)) is not None:
        k = w1.const.shape[0] if w1.const is not None else 0
        one_group = is_grouped(qw) and qw.granularity.axis == 0 and (qw.granularity.group_size or 0) >= k
        per_tensor = qw.granularity.kind is GranularityKind.PER_TENSOR
        if op != "MatMul" or qw.dtype not in WEIGHT_DTYPES or qw.zero_point.any() or not (one_group or per_tensor):
            return False, (
                f"dynamic quantization in {RUNTIME} runs a MatMul with int8 symmetric weights per tensor "
                f"or per channel; %{w1.name} of this {op} is {qw.dtype} {qw.granularity.kind.value}"
            )
        return True, (f"runs as {WEIGHT_ONLY.kernel} (i8 weights) with activations quantized per batch at run "
                      f"time ({DYNAMIC_RUNTIME_CONFIG})")  # fmt: skip
    if qx is None and w1 is not None and (qw := _qtype(w1)) is not None and is_grouped(qw):  # weight-only unit
        problem = weight_only_problem(node, w1, qw, WEIGHT_ONLY, RUNTIME)
        group, k = qw.granularity.group_size or 0, w1.const.shape[0] if w1.const is not None else 0
        if problem is None and group < k and k % group:
            problem = (
                f"weight %{w1.name} has K={k} in groups of {group}; OpenVINO's ONNX frontend takes blocked "
                "weights only when the group size divides K (choose a divisor, or -1: one group per channel)"
            )
        if problem is not None:
            return False, problem
        return True, f"runs as {WEIGHT_ONLY.kernel} ({qw.dtype} weights, group {qw.granularity.group_size})"
    if is_fp8_unit(node):
        if (problem := fp8_unit_problem(node, weights, RUNTIME)) is not None:
            return False, problem
        return True, (f"emulated: FakeConvert on the input, f8 weights converted to f32, and an f32 {op} ({RUNTIME} "
                      "has no FP8 kernels)")  # fmt: skip
    if x is None or qx is None:
        return False, f"input of {op} is not quantized; without a FakeQuantize in front {RUNTIME} runs it FP32"
    if (problem := activation_problem(x, qx, f"{RUNTIME}'s int8 {op}", ACTIVATION_DTYPES)) is not None:
        return False, problem
    for i, axis in weights.items():
        w = node.inputs[i]
        assert w is not None
        qw = _qtype(w)
        if qw is None:
            return False, f"weight %{w.name} of {op} is not quantized"
        if (problem := weight_problem(node, w, qw, axis, f"int8 {op}", RUNTIME, WEIGHT_DTYPES)) is not None:
            return False, problem
    return True, f"runs int8 ({qx.dtype} activations x i8 symmetric weights)"


def legalize_for_openvino(graph: Graph) -> LegalizeReport:
    """Make `graph` (mutated) what OpenVINO's CPU plugin runs in int8; every float op and change gets a reason.

    Raises `PassError` for uncalibrated QuantSpecs and for per-channel weights in a graph below opset 13 (the QDQ
    lowering the emitter feeds to OpenVINO's ONNX frontend needs the `axis` attribute).
    """
    require_calibrated(graph)
    report = LegalizeReport()
    status = {n: _compute_status(n) for n in graph.nodes if n.op_type in INT8_OPS}
    remove_unread(graph, status, report, TABLE)
    _remove_fp8_unread(graph, status, report)
    kinds = {(q.granularity.kind, q.dtype.bits) for v in graph.values() if (q := _qtype(v)) is not None}
    report.opset_before = graph.opset
    needed = (MIN_OPSET_BLOCKED if any(k is GranularityKind.PER_GROUP or bits == 4 for k, bits in kinds)
              else MIN_OPSET_PER_AXIS if any(k is not GranularityKind.PER_TENSOR for k, _ in kinds) else 0)  # fmt: skip
    fp8 = any(is_fp8(_qtype(v)) for v in graph.values())
    if fp8 and needed < MIN_OPSET_FP8:
        needed = MIN_OPSET_FP8
    if graph.opset < needed:
        what = ("blocked 4/8-bit weights" if needed == MIN_OPSET_BLOCKED else "float8 Q/DQ" if needed == MIN_OPSET_FP8
                else "per-channel quantization")  # fmt: skip
        why = f"{what} need opset {needed} in the QDQ model OpenVINO reads"
        report.changed += upgrade_opset(graph, needed, why=why)
    report.opset_after = graph.opset
    for node, name in zip(graph.nodes, node_names(graph)):
        module = node.source.module if node.source is not None else ""
        if node in status:
            quantized, reason = status[node]
        else:
            quantized, reason = _other_status(node)
        report.nodes.append(OpDecision(name, node.op_type, module, quantized, reason))
    return report


def _remove_fp8_unread(graph: Graph, status: dict[Node, tuple[bool, str]], report: LegalizeReport) -> None:
    """Drop FP8 activation types no FP8 unit reads as its input: with no FP8 kernel, LPT has nothing to move them to
    (Relu, MaxPool or graph outputs carrying FP8 types from annotation)."""
    for v in graph.values():
        if v.is_constant or not is_fp8(_qtype(v)):
            continue
        if not any(u.idx == 0 and status.get(u.node, (False, ""))[0] for u in v.uses()):
            v.quant = None
            report.removed.append(ValueChange(v.name, FP8_ORPHAN))


def _other_status(node: Node) -> tuple[bool, str]:
    if not any(_qtype(v) is not None for v in [*node.inputs, *node.outputs]):
        return False, f"{node.op_type} has no quantized input or output"
    if any(is_fp8(_qtype(v)) for v in [*node.inputs, *node.outputs]):
        return False, f"{node.op_type} runs f32 next to a FakeConvert ({RUNTIME} has no FP8 kernels)"
    kind = TABLE.kind(node.op_type)
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


def is_weight_only_unit(node: Node) -> bool:
    """A quantized MatMul/Gemm whose weight is quantized and whose activation is not (weight-only), or is quantized
    by the runtime (dynamic): either runs a FullyConnected on compressed weights."""
    x = node.inputs[0] if node.inputs else None
    w = node.inputs[1] if len(node.inputs) > 1 else None
    qw = _qtype(w)
    if w is None or not w.is_constant or qw is None or _qtype(x) is not None:
        return False
    return is_grouped(qw) or is_dynamic_input(x)


def has_dynamic_units(graph: Graph) -> bool:
    """Whether a legalized graph has MatMuls whose activations the runtime quantizes (its runtime config says so)."""
    return any(is_dynamic_input(n.inputs[0]) for n in quantized_compute_units(graph) if n.inputs)
