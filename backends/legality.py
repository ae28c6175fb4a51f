"""Legality checks every backend shares: reading a value's quant type and the type constraints of 8-bit kernels
(activations per tensor in 8 bits, symmetric int8 weights per output channel or per tensor, identical parameters
across data movement). Each returns the reason a kernel cannot run, or None; the backend names its kernel and
runtime in the message. Backend-specific rules (ORT's int32 bias, Relu/Clip folding) stay in the backend."""

from __future__ import annotations

from collections.abc import Set

from quantir.backends.contract import CapabilityTable, LegalizeReport, ValueChange, WeightOnlyCapability
from quantir.ir import DType, GranularityKind, Graph, Node, QuantSpec, QuantType, TensorType, Value
from quantir.ir.traits import UnitKind

__all__ = [
    "EIGHT_BIT",
    "FP8_DTYPES",
    "FP8_OPS",
    "LOW_BIT_WEIGHTS",
    "activation_problem",
    "describe_params",
    "fp8_unit_problem",
    "is_dynamic_input",
    "is_fp8",
    "is_grouped",
    "quant_type_of",
    "remove_unread",
    "same_params",
    "weight_only_problem",
    "weight_problem",
]

EIGHT_BIT = frozenset({DType.U8, DType.I8})
FP8_DTYPES = frozenset({DType.F8E4M3FN, DType.F8E5M2})
"""The FP8 storage types ONNX (QuantizeLinear-19 float8e4m3fn/float8e5m2) and OpenVINO (FakeConvert f8e4m3/f8e5m2)
both express; the `fnuz` variants have neither."""
FP8_OPS = frozenset({"Conv", "MatMul", "Gemm"})
"""The ops an FP8 unit is: FP8 activation and constant FP8 weight in, float out (the Gaudi FP8 form)."""


def quant_type_of(v: Value | None) -> QuantType | None:
    """The calibrated quant type of `v`, or None."""
    return v.quant if v is not None and isinstance(v.quant, QuantType) else None


def describe_params(q: QuantType) -> str:
    """`u8 scale [0.1] zp [3]`, for messages (at most four channels shown)."""
    return f"{q.dtype} scale {q.scale.reshape(-1)[:4].tolist()} zp {q.zero_point.reshape(-1)[:4].tolist()}"


def activation_problem(v: Value, q: QuantType, kernel: str, dtypes: Set[DType] = EIGHT_BIT) -> str | None:
    """Activations of a kernel are 8-bit (`dtypes`) and per tensor: one scalar scale and zero point."""
    if q.dtype not in dtypes:
        return f"%{v.name} is {q.dtype}; {kernel} needs 8-bit (u8/s8) activations"
    if q.granularity.kind is not GranularityKind.PER_TENSOR:
        return f"%{v.name} is quantized {q.granularity.kind.value}; {kernel} needs one activation scale and zero point"
    return None


def weight_problem(
    node: Node, w: Value, q: QuantType, axis: int, kernel: str, runtime: str, dtypes: Set[DType] = frozenset({DType.I8})
) -> str | None:
    """Weights are s8 (`dtypes`) symmetric with zero point 0, per tensor or per channel on the op's output-channel
    `axis`."""
    if q.dtype not in dtypes:
        return f"weight %{w.name} is {q.dtype}; {kernel} needs s8 symmetric weights"
    if q.zero_point.any():
        return (f"weight %{w.name} is asymmetric (nonzero zero points); {kernel} needs symmetric weights with zero "
                f"point 0, so {runtime} runs it in float")  # fmt: skip
    g = q.granularity
    if g.kind is GranularityKind.PER_GROUP:
        return f"weight %{w.name} is quantized per group; {runtime} has no 8-bit blocked {kernel}"
    rank = w.type.rank if isinstance(w.type, TensorType) else None
    if g.kind is GranularityKind.PER_CHANNEL and g.axis is not None and rank and g.axis % rank != axis:
        return (f"weight %{w.name} is quantized per channel on axis {g.axis % rank}; the output channels of "
                f"{node.op_type} are on axis {axis}")  # fmt: skip
    return None


def same_params(a: QuantType, b: QuantType) -> bool:
    """Byte-identical storage type, granularity, scale and zero point: what a runtime needs to move int8 data
    through an op without requantizing."""
    return (a.dtype == b.dtype and a.granularity == b.granularity and a.scale.tobytes() == b.scale.tobytes()
            and a.zero_point.tobytes() == b.zero_point.tobytes())  # fmt: skip


LOW_BIT_WEIGHTS = frozenset({DType.I4, DType.U4, DType.I8, DType.U8})
"""Weight-only storage types (ONNX blocked DequantizeLinear and OpenVINO compressed constants both have them)."""


def is_dynamic_input(v: Value | None) -> bool:
    """`v` carries a dynamic activation spec: quantized by the runtime from each batch."""
    return v is not None and isinstance(v.quant, QuantSpec) and v.quant.dynamic


def is_grouped(q: QuantType) -> bool:
    """A weight quantized in groups: what weight-only quantization produces (per output channel is one group)."""
    return q.granularity.kind is GranularityKind.PER_GROUP


def weight_only_problem(node: Node, w: Value, q: QuantType, caps: WeightOnlyCapability, runtime: str) -> str | None:
    """A weight-only unit (float activations) runs `caps.kernel` when the op is one it covers and the weight is a
    4/8-bit type (`caps.bits`) in groups along the reduction axis: axis 0 of a MatMul's [K, N] weight."""
    if node.op_type not in caps.ops:
        return f"{node.op_type} has no weight-only kernel in {runtime} ({caps.kernel} covers {', '.join(caps.ops)})"
    if q.dtype not in LOW_BIT_WEIGHTS or q.dtype.bits not in caps.bits:
        return f"weight %{w.name} is {q.dtype}; {caps.kernel} takes {'/'.join(map(str, caps.bits))}-bit weights"
    g = q.granularity
    if g.kind is not GranularityKind.PER_GROUP or g.axis is None:
        return f"weight %{w.name} is quantized {g.kind.value}; {caps.kernel} takes weights in groups along K"
    rank = w.type.rank if isinstance(w.type, TensorType) else None
    if rank != 2 or g.axis % 2 != 0:
        return (f"weight %{w.name} is grouped along axis {g.axis}; {caps.kernel} groups the reduction axis (0 of "
                "a MatMul's [K, N] weight), so group_dim=0 has no kernel here")  # fmt: skip
    return None


def remove_unread(graph: Graph, status: dict[Node, tuple[bool, str]], report: LegalizeReport,
                  table: CapabilityTable, *, others_read_float: bool = False) -> None:  # fmt: skip
    """Drop quant types no int8 region needs: values read only by float heavy ops (`status` says which compute units
    run low precision, and why), directly or through `table`'s data-movement ops; each removal gets its reason.
    Other ops keep what they read unless `others_read_float` (a runtime that lowers no quantizer outside its
    kernels: torch's)."""
    changed = True
    while changed:
        changed = False
        for v in graph.values():
            q = quant_type_of(v)
            if q is None or graph.is_output(v) or not v.uses():
                continue
            if v.is_constant:
                readers_float = all(u.node in status and not status[u.node][0] for u in v.uses())
            else:
                readers_float = all(_float_reader(u.node, status, table, others_read_float) for u in v.uses())
            if readers_float:
                v.quant = None
                reason = next(status[u.node][1] for u in v.uses() if u.node in status) if any(
                    u.node in status for u in v.uses()) else "only float ops read it"  # fmt: skip
                report.removed.append(ValueChange(v.name, f"read only by float ops ({reason})"))
                changed = True


def _float_reader(node: Node, status: dict[Node, tuple[bool, str]], table: CapabilityTable, others: bool) -> bool:
    if node in status:
        return not status[node][0]
    if table.kind(node.op_type) is UnitKind.DROP:
        outs = [o for o in node.outputs if o is not None]
        return bool(outs) and all(quant_type_of(o) is None and o.uses() for o in outs)
    return others


# ---- FP8 units (emulated on CPUs: the runtime casts to FP8 and back, the op itself runs in float) ----------------


def is_fp8(q: QuantType | None) -> bool:
    """`q` is an FP8 (float storage) quant type."""
    return q is not None and q.dtype.is_float


def fp8_unit_problem(node: Node, weights: dict[int, int], runtime: str) -> str | None:
    """Why `node` (a Conv/MatMul/Gemm with an FP8 input or weight) is not an FP8 unit `runtime` can emulate, or None.

    An FP8 unit reads an FP8 activation (per tensor, zero point 0) and a constant FP8 weight (zero point 0, per tensor
    or per output channel: `weights` maps the constant weight inputs to their channel axis); its bias and output are
    float."""
    op = node.op_type
    x = node.inputs[0] if node.inputs else None
    w = node.inputs[1] if 1 in weights else None
    qx, qw = quant_type_of(x), quant_type_of(w)
    if op not in FP8_OPS:
        return f"{op} has no FP8 form in {runtime} (FP8 covers {', '.join(sorted(FP8_OPS))})"
    if w is None:
        return f"{op} has no constant weight; an FP8 {op} here needs an FP8 activation times a constant FP8 weight"
    for v, q, what in ((x, qx, "input"), (w, qw, "weight")):
        assert v is not None
        if q is None:
            return f"{what} %{v.name} of {op} is not quantized; an FP8 {op} needs FP8 activation and weight"
        if q.dtype not in FP8_DTYPES:
            kind = "FP8" if q.dtype.is_float else "integer"
            return (
                f"{what} %{v.name} of {op} is {q.dtype} ({kind}); {runtime} takes FP8 as "
                f"{' or '.join(sorted(d.value for d in FP8_DTYPES))}, and not mixed with integer types"
            )
        if q.zero_point.any():
            return f"{what} %{v.name} of {op} has a nonzero zero point; FP8 quantization is symmetric"
    assert x is not None and w is not None and qx is not None and qw is not None
    if qx.granularity.kind is not GranularityKind.PER_TENSOR:
        return f"input %{x.name} of {op} is FP8 {qx.granularity.kind.value}; FP8 activations take one scale"
    g = qw.granularity
    rank = w.type.rank if isinstance(w.type, TensorType) else None
    if g.kind is GranularityKind.PER_GROUP:
        return f"weight %{w.name} is FP8 per group; FP8 weights take one scale per tensor or per output channel"
    if g.kind is GranularityKind.PER_CHANNEL and g.axis is not None and rank and g.axis % rank != weights[1]:
        return (f"weight %{w.name} is FP8 per channel on axis {g.axis % rank}; the output channels of {op} are on "
                f"axis {weights[1]}")  # fmt: skip
    return None
