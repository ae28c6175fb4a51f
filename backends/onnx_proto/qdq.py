"""Lower a quantized IR graph to explicit QuantizeLinear/DequantizeLinear nodes (IR -> IR, on a copy).

Shared by the backends that consume QDQ ONNX: onnx_qdq writes it as is, openvino feeds it to OpenVINO's ONNX
frontend (activation Q/DQ -> FakeQuantize, int8 weight DQ -> i8 Constant -> Convert -> Multiply).

Quantized constants become integer initializers read through DequantizeLinear; quantized activations get a Q -> DQ
pair after their producer that all readers read. The result has no quant types left: it is a float graph with Q/DQ
ops that `quantir.backends.onnx_proto` writes as ONNX.
"""

from __future__ import annotations

import numpy as np

from quantir.ir import (
    Attr,
    DType,
    GranularityKind,
    Graph,
    Node,
    PassError,
    QuantSpec,
    QuantType,
    Tensor,
    TensorType,
    Value,
    verify,
)
from quantir.ir.clone import clone_graph
from quantir.ir.printer import format_context
from quantir.ir.quant_math import quantize

__all__ = [
    "MIN_OPSET_BLOCKED", "MIN_OPSET_FP8", "MIN_OPSET_PER_AXIS", "MIN_OPSET_QDQ", "lower_to_qdq", "node_names",
    "require_calibrated",
]  # fmt: skip

MIN_OPSET_QDQ = 10
"""QuantizeLinear/DequantizeLinear exist from opset 10 (per tensor)."""
MIN_OPSET_PER_AXIS = 13
"""Their `axis` attribute (per-channel scales) exists from opset 13."""
MIN_OPSET_BLOCKED = 21
MIN_OPSET_FP8 = 19
"""float8 storage types (and QuantizeLinear's `saturate`) exist from opset 19."""


def require_calibrated(graph: Graph) -> None:
    """Refuse a graph that still carries uncalibrated `QuantSpec` annotations."""
    for v in graph.values():
        if isinstance(v.quant, QuantSpec) and not v.quant.dynamic:  # a dynamic spec is quantized at run time
            p = v.producer
            where = f"output of {p.describe()}" if p is not None else "a constant" if v.is_constant else "a graph input"
            context = f"\n{format_context(graph, p)}" if p is not None else ""
            raise PassError(
                f"%{v.name} ({where}) still has an uncalibrated QuantSpec ({v.quant.dtype} {v.quant.scheme.value}); "
                "QDQ lowering needs scales and zero points: run calibration and compute_qparams first" + context
            )


def node_names(graph: Graph) -> list[str]:
    """The names nodes get in the emitted model, in graph order: unique, and never empty.

    ORT names a fused kernel after its target node, so `verify` finds IR nodes in the optimized model by these.
    """
    taken = {n.name for n in graph.nodes if n.name}
    seen: set[str] = set()
    names: list[str] = []
    for node in graph.nodes:
        name = node.name
        if not name or name in seen:
            first = next((v.name for v in node.outputs if v is not None), "")
            name = _fresh(name or f"{node.op_type}_{first}", taken | seen)
        seen.add(name)
        names.append(name)
    return names


def _fresh(base: str, taken: set[str]) -> str:
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name


class _Lowering:
    """The state of one lowering: the graph copy and the names already used in it."""

    def __init__(self, graph: Graph, *, guard_float_weights: bool = True) -> None:
        self.graph = graph
        self.guard_float_weights = guard_float_weights
        self.names = {v.name for v in graph.values()} | {n.name for n in graph.nodes}

    def fresh(self, base: str) -> str:
        name = _fresh(base, self.names)
        self.names.add(name)
        return name

    def params(self, base: str, q: QuantType) -> tuple[Value, Value, dict[str, Attr]]:
        """Scale and zero-point initializers (scalar per tensor, 1-D per channel) and the Q/DQ attributes."""
        if q.dtype.is_float and q.zero_point.any():
            raise PassError(f"%{base}: {q.dtype} quantization needs zero point 0 in ONNX")
        zp = Tensor.from_numpy(q.zero_point.astype(q.dtype.storage), q.dtype)  # float storage: code 0 is +0.0
        scale = Tensor.from_numpy(np.array(q.scale, dtype=np.float32), DType.F32)
        s = self.graph.add_constant(self.fresh(f"{base}_scale"), scale)
        z = self.graph.add_constant(self.fresh(f"{base}_zero_point"), zp)
        attrs: dict[str, Attr] = {}
        g = q.granularity
        if g.kind is not GranularityKind.PER_TENSOR:
            assert g.axis is not None
            attrs["axis"] = Attr.of(g.axis)
        if g.kind is GranularityKind.PER_GROUP:
            assert g.group_size is not None
            attrs["block_size"] = Attr.of(g.group_size)
        return s, z, attrs

    def constant(self, v: Value, q: QuantType) -> None:
        """`<name>_quantized` (the integer payload) -> DequantizeLinear -> every reader of `v`."""
        assert v.const is not None
        base = v.name
        payload = quantize(v.const.numpy(), q)
        stored = self.graph.add_constant(self.fresh(f"{base}_quantized"), Tensor.from_numpy(payload, q.dtype))
        scale, zp, attrs = self.params(base, q)
        out = Value(self.fresh(f"{base}_DequantizeLinear_Output"), v.type)
        dq = Node(
            "DequantizeLinear", [stored, scale, zp], [out], attrs=attrs, name=self.fresh(f"{base}_DequantizeLinear")
        )
        self._insert_first(dq)
        v.replace_all_uses_with(out, graph_outputs=self.graph)
        self.graph.remove_constant(v)
        if self.graph.is_output(out):  # a constant graph output keeps its name
            out.name = base

    def activation(self, v: Value, q: QuantType) -> None:
        """`v` -> QuantizeLinear -> DequantizeLinear -> every reader (a quantized graph output keeps its name)."""
        base = v.name
        readers = v.uses()
        scale, zp, attrs = self.params(base, q)
        shape = v.type.shape if isinstance(v.type, TensorType) else None
        qv = Value(self.fresh(f"{base}_QuantizeLinear_Output"), TensorType(q.dtype, shape))
        dqv = Value(self.fresh(f"{base}_DequantizeLinear_Output"), v.type)
        q_attrs = {**attrs, "saturate": Attr.of(1)} if q.dtype.is_float else attrs  # FP8: clamp, never inf/NaN
        x = self._fp8_relu_guard(v) if q.dtype.is_float else v
        qn = Node("QuantizeLinear", [x, scale, zp], [qv], attrs=q_attrs, name=self.fresh(f"{base}_QuantizeLinear"))
        dqn = Node("DequantizeLinear", [qv, scale, zp], [dqv], attrs=dict(attrs),
                   name=self.fresh(f"{base}_DequantizeLinear"))  # fmt: skip
        self._insert_pair(v, qn, dqn)
        if x is not v:
            assert x.producer is not None
            self.graph.insert_before(qn, x.producer)
        for usage in readers:
            usage.node.set_input(usage.idx, self._guarded(dqv, usage.node) if usage.idx == 0 else dqv)
        # A graph input that is also a graph output cannot be renamed; that output stays the raw input.
        if self.graph.is_output(v) and v.producer is not None:
            # Neither a fused node nor a DQ may be a graph output: end with Q -> DQ -> output, keeping its name.
            v.name, dqv.name = self.fresh(f"{base}_QuantizeLinear_Input"), base
            self.graph.outputs = [dqv if o is v else o for o in self.graph.outputs]

    def dynamic(self, v: Value) -> None:
        """`v` -> DynamicQuantizeLinear (uint8, scale and zero point from the batch) -> DequantizeLinear -> each
        MatMul/Gemm reading it as its data input: the ONNX-standard form of run-time quantization (the reference).
        Other readers (a residual Add) read `v` in float, as they do when the kernel quantizes its own input."""
        base = v.name
        readers = v.uses()
        shape = v.type.shape if isinstance(v.type, TensorType) else None
        qv = Value(self.fresh(f"{base}_DynamicQuantizeLinear_Output"), TensorType(DType.U8, shape))
        sv = Value(self.fresh(f"{base}_scale"), TensorType(DType.F32, ()))
        zv = Value(self.fresh(f"{base}_zero_point"), TensorType(DType.U8, ()))
        dqv = Value(self.fresh(f"{base}_DequantizeLinear_Output"), v.type)
        qn = Node("DynamicQuantizeLinear", [v], [qv, sv, zv], name=self.fresh(f"{base}_DynamicQuantizeLinear"))
        dqn = Node("DequantizeLinear", [qv, sv, zv], [dqv], name=self.fresh(f"{base}_DequantizeLinear"))
        self._insert_pair(v, qn, dqn)
        for usage in readers:
            if usage.idx == 0 and usage.node.op_type in _DYNAMIC_READERS:  # only the kernels that quantize it
                usage.node.set_input(usage.idx, dqv)

    def _fp8_relu_guard(self, v: Value) -> Value:
        """The value a float8 QuantizeLinear of `v` reads: `Max(v, v)` when Relu/Clip produce `v`, else `v`.

        ORT's ReluQuantFusion/ClipQuantFusion (level 2, on even with `session.disable_quant_qdq`) delete a Relu/Clip
        in front of a QuantizeLinear whose zero point is the storage minimum, which for float8 (zero point +0.0,
        with negative codes below it) drops the clamp: measured on ORT 1.32, the digits CNN's FP8 logits then
        differed from the unoptimized model by 1.2 relative. The exact `Max(x, x)` between them keeps the Relu (the
        caller inserts the node, before the Q)."""
        p = v.producer
        if p is None or p.op_type not in _FUSED_INTO_Q or p.domain not in ("", "ai.onnx"):
            return v
        out = Value(self.fresh(f"{v.name}_fp8_input"), v.type)
        Node("Max", [v, v], [out], name=self.fresh(f"{p.name}_KeepActivation"))
        return out

    def _guarded(self, dqv: Value, reader: Node) -> Value:
        """The value a float Conv/ConvTranspose/Gemm reads instead of a DQ output.

        ORT's WeightBiasQuantization (level 1) quantizes the float weight of any Conv/ConvTranspose/Gemm whose
        input 0 comes straight from a per-tensor DequantizeLinear, which would silently run a user's fp32 fallback
        on ORT-chosen int8 weights. `Max(x, x)` is exact and survives ORT's eliminations (Identity and Cast do not).
        """
        if not self.guard_float_weights:
            return dqv
        weight = reader.inputs[1] if len(reader.inputs) > 1 else None
        float_weight = weight is not None and weight.const is not None and weight.quant is None
        if reader.op_type not in _WEIGHT_BIAS_QUANTIZED or reader.domain not in ("", "ai.onnx") or not float_weight:
            return dqv
        out = Value(self.fresh(f"{reader.name}_float_input"), dqv.type)
        guard = Node("Max", [dqv, dqv], [out], name=self.fresh(f"{reader.name}_KeepFloat"))
        self.graph.insert_before(reader, guard)
        return out

    def _insert_pair(self, v: Value, qn: Node, dqn: Node) -> None:
        """The quantize and dequantize nodes of `v`, right after its producer (first, for a graph input)."""
        if v.producer is None:
            self._insert_first(qn)
        else:
            self.graph.insert_after(v.producer, qn)
        self.graph.insert_after(qn, dqn)

    def _insert_first(self, node: Node) -> None:
        nodes = self.graph.nodes
        if nodes:
            self.graph.insert_before(nodes[0], node)
        else:
            self.graph.append(node)


_DYNAMIC_READERS = frozenset({"MatMul", "Gemm"})
"""Readers that quantize a dynamic activation themselves (DynamicQuantizeMatMul); every other reader reads float."""

_FUSED_INTO_Q = frozenset({"Relu", "Clip"})
"""Ops ORT deletes in front of a QuantizeLinear (ReluQuantFusion, ClipQuantFusion)."""

_WEIGHT_BIAS_QUANTIZED = frozenset({"Conv", "ConvTranspose", "Gemm"})
"""Ops whose float weights ORT itself quantizes when their input comes from a DequantizeLinear."""

_DTYPE_OPSET: dict[DType, int] = {
    **dict.fromkeys((DType.F8E4M3FN, DType.F8E4M3FNUZ, DType.F8E5M2, DType.F8E5M2FNUZ), MIN_OPSET_FP8),
    **dict.fromkeys((DType.I4, DType.U4, DType.I16, DType.U16), 21),
}
"""Storage types QuantizeLinear/DequantizeLinear accept only from a later opset (8-bit and int32 bias: 10)."""


def _check_opset(graph: Graph, quantized: list[tuple[Value, QuantType]]) -> None:
    needs = {
        GranularityKind.PER_TENSOR: (MIN_OPSET_QDQ, "QuantizeLinear/DequantizeLinear"),
        GranularityKind.PER_CHANNEL: (MIN_OPSET_PER_AXIS, "per-channel QuantizeLinear/DequantizeLinear (axis)"),
        GranularityKind.PER_GROUP: (MIN_OPSET_BLOCKED, "blocked QuantizeLinear/DequantizeLinear (block_size)"),
    }
    for v, q in quantized:
        opset, what = needs[q.granularity.kind]
        if _DTYPE_OPSET.get(q.dtype, 0) > opset:
            opset, what = _DTYPE_OPSET[q.dtype], f"{q.dtype} QuantizeLinear/DequantizeLinear"
        if graph.opset < opset:
            raise PassError(
                f"%{v.name} needs {what}, which exists from opset {opset}; the graph is opset {graph.opset}. "
                "Run the backend's legalize first (legalize_for_onnx_qdq, legalize_for_openvino), which raises the "
                "opset where the model allows it"
            )


def lower_to_qdq(graph: Graph, *, guard_float_weights: bool = True, dynamic: bool = True) -> Graph:
    """A copy of `graph` with every quant type made explicit as Q/DQ nodes; `graph` itself is not changed.

    Constants: `<name>_quantized` + `<name>_scale` + `<name>_zero_point` -> `<name>_DequantizeLinear`.
    Activations: `<name>_QuantizeLinear` -> `<name>_DequantizeLinear` after the producer (or the graph input).
    A DQ output read by several quantized units is left shared: ORT's EnsureUniqueDQForNodeUnit duplicates it.
    `guard_float_weights` puts the exact `Max(x, x)` between a DQ and a float Conv/ConvTranspose/Gemm, which ORT
    would otherwise quantize itself (WeightBiasQuantization); runtimes without that rewrite pass False.
    Dynamic activation specs become DynamicQuantizeLinear -> DequantizeLinear; `dynamic=False` leaves them out (a
    runtime that quantizes activations itself, e.g. OpenVINO's CPU plugin).
    """
    require_calibrated(graph)
    g, _ = clone_graph(graph)
    for node, name in zip(g.nodes, node_names(g)):
        node.name = name
    quantized = [(v, v.quant) for v in g.values() if isinstance(v.quant, QuantType)]
    _check_opset(g, quantized)
    lowering = _Lowering(g, guard_float_weights=guard_float_weights)
    for v, q in quantized:
        if v.is_constant:
            lowering.constant(v, q)
        else:
            lowering.activation(v, q)
    if dynamic:
        for v in [v for v in g.values() if isinstance(v.quant, QuantSpec) and v.quant.dynamic]:
            lowering.dynamic(v)
    for v in g.values():
        v.quant = None
    verify(g)
    return g
