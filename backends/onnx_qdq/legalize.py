"""Legalize a quantized IR graph for ONNX Runtime's QDQ fusion (ARCHITECTURE.md §5).

Postcondition: only what ORT's CPU EP runs as fused integer kernels stays quantized, plus the inputs and weights of
FP8 Conv/MatMul/Gemm units (ORT emulates those: float8 Q/DQ, then the float op), and every quant type removed or op
left in float has a reason in the `LegalizeReport`. `classify` applies the node-unit rules of
`capabilities` to the current quant types; `legalize_for_onnx_qdq` removes what no unit needs until nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantir.backends.contract import LegalizeReport, OpDecision, ValueChange
from quantir.backends.legality import (
    activation_problem,
    describe_params,
    fp8_unit_problem,
    is_dynamic_input,
    is_fp8,
    is_grouped,
    quant_type_of,
    same_params,
    weight_only_problem,
    weight_problem,
)
from quantir.backends.onnx_proto.opset_upgrade import upgrade_opset, upgrade_problem
from quantir.backends.onnx_proto.qdq import node_names, require_calibrated
from quantir.backends.onnx_qdq.capabilities import (
    ATTRIBUTE_RULES,
    MIN_OPSET_BLOCKED,
    MIN_OPSET_FP8,
    MIN_OPSET_PER_AXIS,
    MIN_OPSET_QDQ,
    RUNTIME,
    WEIGHT_ONLY,
    Capability,
    UnitKind,
    bias_problem,
    capability_of,
    fold_problem,
    fp8_kernel,
)
from quantir.backends.onnx_qdq.matmul_nbits import blockable
from quantir.ir import DType, GranularityKind, Graph, Node, QuantType, TensorType, Value, traits_of
from quantir.ir.traits import weight_inputs

__all__ = [
    "LegalizeReport", "UnitStatus", "classify", "emulated_units", "legalize_for_onnx_qdq", "quantized_compute_units",
]  # fmt: skip

ORPHAN = "no integer kernel reads or writes it"
FP8_ORPHAN = (
    "no FP8 Conv/MatMul/Gemm reads it: ONNX Runtime has no FP8 kernels on CPU, so a float8 QuantizeLinear/"
    "DequantizeLinear pair here would only add rounding"
)


# ---- node-unit rules ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnitStatus:
    """How ORT would run one node given the current quant types."""

    quantized: bool
    reason: str
    kind: UnitKind | None = None
    kernel: str = ""
    fold: Node | None = None
    """The Relu/Clip absorbed into this compute unit's output QuantizeLinear."""
    emulated: bool = False
    """An FP8 unit: ORT runs its float8 Q/DQ and the op in float (it reads FP8 input and weight, writes float)."""


def _float(reason: str, kind: UnitKind | None = None) -> UnitStatus:
    return UnitStatus(False, reason, kind)


def _folded_activation(node: Node, graph: Graph) -> Node | None:
    """The Relu/Clip that is the only reader of `node`'s output and can fold into its Q."""
    out = node.outputs[0] if node.outputs else None
    if out is None or graph.is_output(out) or len(out.uses()) != 1:
        return None
    reader, idx = out.uses()[0]
    cap = capability_of(reader)
    if idx != 0 or cap is None or cap.kind is not UnitKind.ABSORBED:
        return None
    return reader if fold_problem(reader) is None else None


def _slots(node: Node, cap: Capability) -> tuple[int, ...]:
    return tuple(range(len(node.inputs))) if cap.inputs is None else cap.inputs


def _not_float(node: Node, cap: Capability) -> str | None:
    """A reason when the unit's data inputs are all integer or bool tensors (shape arithmetic): nothing to quantize."""
    data = [node.inputs[i] for i in _slots(node, cap) if i < len(node.inputs)]
    types = [v.type for v in data if v is not None]
    if types and all(isinstance(t, TensorType) and not t.dtype.is_float for t in types):
        kinds = sorted({str(t.dtype) for t in types if isinstance(t, TensorType)})
        return f"{node.op_type} works on {'/'.join(kinds)} data, not float: nothing to quantize"
    return None


def _compute_unit(node: Node, cap: Capability, graph: Graph, opset: int) -> UnitStatus:
    op = node.op_type
    if (problem := _not_float(node, cap)) is not None:
        return _float(problem, cap.kind)
    weights = {i: a for i, a in weight_inputs(node).items() if (w := node.inputs[i]) is not None and w.is_constant}
    if (fp8 := _fp8_unit(node, weights, cap)) is not None:
        return fp8
    if opset < cap.min_opset:
        return _float(f"{op} at opset {opset}: ORT fuses it only from opset {cap.min_opset}", cap.kind)
    rule = ATTRIBUTE_RULES.get(op)
    if rule is not None and (problem := rule(node)) is not None:
        return _float(problem, cap.kind)
    if (dynamic := _dynamic_unit(node, weights, cap)) is not None:
        return dynamic
    if (weight_only := _weight_only_unit(node, weights, cap)) is not None:
        return weight_only
    acts: list[tuple[Value, QuantType]] = []
    qs: dict[int, QuantType] = {}
    for i in _slots(node, cap):
        v = node.inputs[i] if i < len(node.inputs) else None
        if v is None:
            continue
        q = quant_type_of(v)
        if q is None:
            return _float(f"input %{v.name} of {op} is not quantized; ORT fuses {op} into {cap.kernel} only when "
                          "every float input comes from DequantizeLinear", cap.kind)  # fmt: skip
        if i in weights:
            problem = weight_problem(node, v, q, weights[i], cap.kernel, RUNTIME)
        else:
            problem = activation_problem(v, q, cap.kernel)
        if problem is not None:
            return _float(problem, cap.kind)
        qs[i] = q
        if i not in weights:
            acts.append((v, q))
    fold = _folded_activation(node, graph)
    out_value = fold.outputs[0] if fold is not None else node.outputs[0]
    assert out_value is not None
    out_q = quant_type_of(out_value)
    kernel = cap.kernel
    if out_q is None:
        if cap.float_output_kernel is None:
            return _float(f"output %{out_value.name} of {op} is not quantized; ORT fuses {op} into {cap.kernel} only "
                          "when QuantizeLinear follows it", cap.kind)  # fmt: skip
        kernel = cap.float_output_kernel
    else:
        if (problem := activation_problem(out_value, out_q, kernel)) is not None:
            return _float(problem, cap.kind)
        acts.append((out_value, out_q))
    if len({q.dtype for _, q in acts}) > 1:
        mix = ", ".join(f"%{v.name} {q.dtype}" for v, q in acts)
        return _float(f"{op} mixes activation types ({mix}); ORT fuses only identical types within a unit", cap.kind)
    if 0 in qs and 1 in qs and (problem := bias_problem(node, qs[0], qs[1], kernel)) is not None:
        return _float(problem, cap.kind)
    return UnitStatus(True, f"runs as {kernel}", cap.kind, kernel, fold)


def _fp8_unit(node: Node, weights: dict[int, int], cap: Capability) -> UnitStatus | None:
    """The status of an FP8 unit (FP8 activation x constant FP8 weight, float output), or None when neither input is
    FP8. ORT emulates it: no fusion, so its attributes (Gemm alpha/beta) and bias do not matter."""
    x = node.inputs[0] if node.inputs else None
    w = node.inputs[1] if len(node.inputs) > 1 else None
    if not (is_fp8(quant_type_of(x)) or is_fp8(quant_type_of(w))):
        return None
    if (problem := fp8_unit_problem(node, weights, RUNTIME)) is not None:
        return _float(problem, cap.kind)
    qx, qw = quant_type_of(x), quant_type_of(w)
    assert qx is not None and qw is not None
    types = "/".join(sorted({f"float8{q.dtype.value[2:]}" for q in (qx, qw)}))
    return UnitStatus(True, f"emulated: ORT runs QuantizeLinear/DequantizeLinear({types}) and a float {node.op_type} "
                      "(no FP8 kernel on CPU)", cap.kind, fp8_kernel(node.op_type), emulated=True)  # fmt: skip


DYNAMIC_KERNEL = "DynamicQuantizeMatMul"


def _dynamic_unit(node: Node, weights: dict[int, int], cap: Capability) -> UnitStatus | None:
    """The status of a dynamic unit (activation quantized at run time, int8 constant weight), or None when `node`
    is not one."""
    x = node.inputs[0] if node.inputs else None
    if not is_dynamic_input(x):
        return None
    w = node.inputs[1] if 1 in weights else None
    qw = quant_type_of(w)
    if node.op_type != "MatMul":
        return _float(f"{node.op_type}: ORT's {DYNAMIC_KERNEL} covers MatMul only", cap.kind)
    if w is None or qw is None:
        return _float(f"the weight of {node.op_type} is not quantized; {DYNAMIC_KERNEL} needs int8 weights", cap.kind)
    if qw.dtype is not DType.I8 or qw.zero_point.any():
        return _float(f"weight %{w.name} is {qw.dtype}{' asymmetric' if qw.zero_point.any() else ''}; "
                      f"{DYNAMIC_KERNEL} here takes int8 symmetric weights", cap.kind)  # fmt: skip
    g = qw.granularity
    k = w.const.shape[0] if w.const is not None else 0
    per_column = g.kind is GranularityKind.PER_GROUP and g.axis == 0 and (g.group_size or 0) >= k
    if g.kind is not GranularityKind.PER_TENSOR and not per_column:
        return _float(f"weight %{w.name} is quantized {g.kind.value}; {DYNAMIC_KERNEL} takes one scale per tensor "
                      "or per output column", cap.kind)  # fmt: skip
    return UnitStatus(True, f"runs as {DYNAMIC_KERNEL} (activations quantized per batch at run time)", cap.kind,
                      DYNAMIC_KERNEL)  # fmt: skip


def _weight_only_unit(node: Node, weights: dict[int, int], cap: Capability) -> UnitStatus | None:
    """The status of a weight-only unit (float activation, quantized constant weight), or None when `node` is not
    one (its activation is quantized too, or its weight is not)."""
    x = node.inputs[0] if node.inputs else None
    w = node.inputs[1] if 1 in weights else None
    qw = quant_type_of(w)
    if w is None or qw is None or quant_type_of(x) is not None or not is_grouped(qw):
        return None
    if (problem := weight_only_problem(node, w, qw, WEIGHT_ONLY, RUNTIME)) is not None:
        return _float(problem, cap.kind)
    bits, group = qw.dtype.bits, qw.granularity.group_size
    k = w.const.shape[0] if w.const is not None else 0
    if group is None or blockable(k, group) is None:
        return _float(f"weight %{w.name} is grouped by {group}; MatMulNBits blocks are powers of two >= 16, so "
                      f"{RUNTIME} would dequantize it and run a float MatMul (choose group_size 16, 32, 64, 128...)",
                      cap.kind)  # fmt: skip
    return UnitStatus(True, f"runs as {WEIGHT_ONLY.kernel} (weight-only {qw.dtype}, group {group}, float activations)",
                      cap.kind, WEIGHT_ONLY.kernel if bits in WEIGHT_ONLY.bits else "")  # fmt: skip


def _drop_problem(node: Node, cap: Capability, opset: int) -> str | None:
    op, x = node.op_type, node.inputs[0] if node.inputs else None
    if (problem := _not_float(node, cap)) is not None:
        return problem
    if opset < cap.min_opset:
        return f"{op} at opset {opset}: ORT runs it on 8-bit data only from opset {cap.min_opset}"
    qx = quant_type_of(x)
    if x is None or qx is None:
        return f"{op} input{f' %{x.name}' if x is not None else ''} is not quantized"
    if is_fp8(qx):
        return f"{op} on FP8 data runs in float: ONNX Runtime has no FP8 kernels on CPU (only float8 Q/DQ)"
    if (problem := activation_problem(x, qx, f"8-bit {op}")) is not None:
        return problem
    for out in node.outputs:
        if out is None:
            continue
        qo = quant_type_of(out)
        if qo is None:
            return f"{op} output %{out.name} is not quantized"
        if not same_params(qx, qo):
            return (f"{op} input and output quantization differ (%{x.name}: {describe_params(qx)}; %{out.name}: "
                    f"{describe_params(qo)}); ORT drops the Q/DQ around {op} only when they are identical")  # fmt: skip
    return None


def reads_quantized(node: Node, index: int) -> bool:
    """Whether input `index` of a quantized `node` is read through DequantizeLinear by its integer kernel."""
    cap = capability_of(node)
    if cap is None or cap.kind is UnitKind.ABSORBED:
        return False
    if cap.kind is UnitKind.DROP:
        return index == 0
    return index in _slots(node, cap) or index == traits_of(node.op_type, node.domain).bias


def classify(graph: Graph, opset: int) -> dict[Node, UnitStatus]:
    """How ORT would run each node of `graph` at `opset` given its current quant types (nothing is changed)."""
    status: dict[Node, UnitStatus] = {}
    for node in graph.nodes:
        cap = capability_of(node)
        if cap is None:
            status[node] = _float(f"{node.op_type} has no integer kernel in {RUNTIME}")
        elif cap.kind is UnitKind.COMPUTE:
            status[node] = _compute_unit(node, cap, graph, opset)
    folded = {st.fold: n for n, st in status.items() if st.quantized and st.fold is not None}
    candidates: dict[Node, UnitStatus] = {}
    for node in graph.nodes:
        cap = capability_of(node)
        if cap is None or node in status:
            continue
        if cap.kind is UnitKind.ABSORBED:
            unit = folded.get(node)
            if unit is not None:
                status[node] = UnitStatus(True, f"{node.op_type} folded into Q", cap.kind)
                continue
            x = node.inputs[0] if node.inputs else None
            p = x.producer if x is not None else None
            why = fold_problem(node) or (
                f"{node.op_type} input has other readers" if p is not None and status.get(p, _float("")).quantized
                else "it follows no quantized Conv/MatMul/Gemm-like op it could fold into")  # fmt: skip
            status[node] = _float(f"{node.op_type} has no integer kernel in ONNX Runtime; {why}", cap.kind)
        elif (problem := _drop_problem(node, cap, opset)) is not None:
            status[node] = _float(problem, cap.kind)
        else:
            candidates[node] = UnitStatus(
                True, f"runs on 8-bit data (ORT drops the Q/DQ around {node.op_type})", cap.kind
            )
    _anchor_drop_units(graph, status, candidates)
    return {n: status[n] for n in graph.nodes}


def _anchor_drop_units(graph: Graph, status: dict[Node, UnitStatus], candidates: dict[Node, UnitStatus]) -> None:
    """A data-movement op stays quantized only when it connects to an integer kernel; alone it is a Q/DQ round trip."""
    anchored = {n for n, st in status.items() if st.quantized}
    changed = True
    while changed:
        changed = False
        for node in candidates.keys() - anchored:
            x = node.inputs[0]
            near = [x.producer] if x is not None and x.producer is not None else []
            near += [u.node for o in node.outputs if o is not None for u in o.uses() if reads_quantized(u.node, u.idx)]
            if any(n in anchored for n in near):
                anchored.add(node)
                changed = True
    for node, st in candidates.items():
        status[node] = st if node in anchored else _float(
            f"{node.op_type} moves data between float ops only; quantizing it would add a Q/DQ round trip "
            "without an integer kernel", st.kind)  # fmt: skip


def _target_opset(graph: Graph, opset_min: int) -> int:
    """The opset of the quantized model: `opset_min` where every node can be carried there (`upgrade_problem`), at
    least what Q/DQ need (10, or 13 for per-channel axes); refuses, naming the node, when even that cannot be
    reached. Pure: the upgrade itself is `upgrade_opset`."""
    quant = [v.quant for v in graph.values() if isinstance(v.quant, QuantType)]
    old = graph.opset
    per_axis = any(q.granularity.kind is GranularityKind.PER_CHANNEL for q in quant)
    blocked = any(q.granularity.kind is GranularityKind.PER_GROUP or q.dtype.bits == 4 for q in quant)
    required = MIN_OPSET_BLOCKED if blocked else MIN_OPSET_PER_AXIS if per_axis else MIN_OPSET_QDQ
    if any(is_fp8(q) for q in quant):
        required = max(required, MIN_OPSET_FP8)
    wanted = max(opset_min, required)
    if not quant or old >= wanted:
        return old
    if upgrade_problem(graph, wanted) is None:
        return wanted
    return max(old, required)  # below `required`, upgrade_opset names the node that cannot be carried


def _reads(st: UnitStatus, node: Node, index: int) -> bool:
    """Whether the unit `node` (status `st`) reads input `index` in its quantized form."""
    if st.emulated:  # an FP8 unit reads FP8 activation and weight; its bias is float
        return index in (0, 1)
    return st.quantized and reads_quantized(node, index)


def _removal_reason(v: Value, status: dict[Node, UnitStatus]) -> str | None:
    """Why `v` must lose its quant type, or None when an integer kernel (or an FP8 unit) reads or writes it."""
    p = v.producer
    if p is not None:
        st = status[p]
        if st.quantized and st.fold is not None:
            return f"{st.fold.op_type} folded into Q"
        if st.quantized and not st.emulated:  # an FP8 unit writes float
            return None
    if any(_reads(status[u.node], u.node, u.idx) for u in v.uses()):
        return None
    if is_fp8(quant_type_of(v)):
        return FP8_ORPHAN
    emulated = [u.node for u in v.uses() if status[u.node].emulated]
    if emulated:
        return f"{emulated[0].op_type} is an FP8 unit (emulated): it reads its bias in float"
    return ORPHAN


def legalize_for_onnx_qdq(graph: Graph, *, opset_min: int = 13) -> LegalizeReport:
    """Remove every quant type ORT's CPU EP would not run in an integer kernel; mutates `graph`.

    Pure function of the graph (no runtime is called). Removals repeat until nothing changes, since dropping one
    unit can leave its neighbours' quant types orphaned. A float node keeps the first reason found for it.
    Raises `PassError` for uncalibrated QuantSpecs, and when per-axis quantization needs opset 13 but an op of the
    graph changed meaning between its opset and 13 (nothing is changed then).
    """
    require_calibrated(graph)
    before = graph.opset
    target = _target_opset(graph, opset_min)
    what = "Q/DQ"
    if target >= MIN_OPSET_PER_AXIS:
        what = "QuantizeLinear/DequantizeLinear with a per-channel axis"
    if target >= MIN_OPSET_FP8 and any(is_fp8(quant_type_of(v)) for v in graph.values()):
        what = "float8 QuantizeLinear/DequantizeLinear"
    if target >= MIN_OPSET_BLOCKED:
        what = "blocked 4/8-bit DequantizeLinear (block_size)"
    rewritten = upgrade_opset(graph, target, why=f"the quantized model needs opset {target} ({what})")
    report = LegalizeReport(changed=rewritten, opset_before=before, opset_after=graph.opset)
    first_reason: dict[Node, str] = {}
    while True:
        status = classify(graph, target)
        for node, st in status.items():
            if not st.quantized:
                first_reason.setdefault(node, st.reason)
        changed = False
        for v in list(graph.values()):
            if isinstance(v.quant, QuantType) and (reason := _removal_reason(v, status)) is not None:
                v.quant = None
                report.removed.append(ValueChange(v.name, reason))
                changed = True
            elif is_dynamic_input(v) and not any(status[u.node].kernel == DYNAMIC_KERNEL for u in v.uses()):
                v.quant = None
                report.removed.append(ValueChange(v.name, f"no {DYNAMIC_KERNEL} reads it: quantizing it at run time "
                                                          "would only add work"))  # fmt: skip
                changed = True
        if not changed:
            break
    for node, name in zip(graph.nodes, node_names(graph)):
        st = status[node]
        module = node.source.module if node.source is not None else ""
        reason = st.reason if st.quantized else first_reason[node]
        report.nodes.append(OpDecision(name, node.op_type, module, st.quantized, reason))
    return report


def emulated_units(graph: Graph) -> set[Node]:
    """The FP8 units of a legalized graph: ORT runs their float8 Q/DQ and the op in float (no FP8 kernel)."""
    return {n for n, st in classify(graph, graph.opset).items() if st.emulated}


def quantized_compute_units(graph: Graph) -> list[tuple[Node, str]]:
    """(node, expected ORT kernel) for each compute unit of a legalized graph that ORT should fuse."""
    status = classify(graph, graph.opset)
    return [(n, st.kernel) for n, st in status.items() if st.quantized and st.kind is UnitKind.COMPUTE]
