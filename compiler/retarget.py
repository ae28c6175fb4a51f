"""Retarget an already-quantized model (a QDQ ONNX file imported with its quant types) to any backend, with no
calibration: `from_quantized` wraps the IR as a `QuantizedModel`, `target_differences` says where the target's
int8 rules differ from the source's, and `requantize` (offered as `quantir convert --requantize-weights`)
recomputes the weight types from the dequantized weights for the target's rules.

Activations keep the source's scales: only weights can be requantized without calibration data.
"""

from __future__ import annotations

import numpy as np

from quantir.backends.registry import DEFAULT_BACKEND, get_backend
from quantir.compiler.config.quant_config import StaticQuantConfig
from quantir.compiler.decisions import aligned_rows, record
from quantir.compiler.pass_manager import PassContext, PassManager
from quantir.compiler.passes.unify_shared_ranges import UnifySharedRanges
from quantir.compiler.qparams.scales import Convention, bias_qparams, compute_qparams
from quantir.compiler.quantized_model import QuantizedModel
from quantir.ir import Granularity, GranularityKind, Graph, Node, QuantSpec, QuantType, Value, verify
from quantir.ir.clone import clone_graph
from quantir.ir.quant_math import fake_quantize, quantize
from quantir.ir.traits import traits_of, weight_inputs

__all__ = [
    "FLOAT_IN_SOURCE",
    "QUANTIZED_BY_SOURCE",
    "float_side_constants",
    "from_quantized",
    "is_quantized_graph",
    "requantize",
    "target_differences",
]

QUANTIZED_BY_SOURCE = "quantized by the source model"
FLOAT_IN_SOURCE = "float in the source model"
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
"""Ops whose constant weights `requantize` may recompute."""


def is_quantized_graph(graph: Graph) -> bool:
    """Whether any value of `graph` carries a calibrated quant type (e.g. raised from Q/DQ nodes)."""
    return any(isinstance(v.quant, QuantType) for v in graph.values())


def _node_quantized(node: Node) -> bool:
    bias = traits_of(node.op_type, node.domain).bias
    reads = [v for i, v in enumerate(node.inputs) if v is not None and i != bias]
    return any(isinstance(v.quant, QuantType) for v in (*reads, *(o for o in node.outputs if o is not None)))


def float_side_constants(graph: Graph, backend: str) -> list[str]:
    """Drop the quant type of constants that are not a weight or bias of a Conv/MatMul/Gemm, for a backend that
    folds them anyway (its `folds_constant_math`). Exact: an imported constant already holds dequantize(q), which its
    type maps to itself, so every reader sees the same numbers. Returns one line per constant."""
    why = get_backend(backend).folds_constant_math
    if why is None:
        return []
    keep: set[int] = set()
    for node in graph.nodes:
        if node.op_type in COMPUTE_OPS:
            bias = traits_of(node.op_type, node.domain).bias
            for i in (*weight_inputs(node), *(() if bias is None else (bias,))):
                if i < len(node.inputs) and (v := node.inputs[i]) is not None:
                    keep.add(id(v))
    lines = []
    for v in graph.constants.values():
        if isinstance(v.quant, QuantType) and id(v) not in keep:
            assert v.const is not None
            if not np.array_equal(fake_quantize(v.const.numpy(), v.quant), v.const.numpy()):
                continue  # not on its grid (a float constant through Q -> DQ): dropping would change it
            v.quant = None
            lines.append(f"%{v.name}: kept as its dequantized float values ({why})")
    return lines


def from_quantized(graph: Graph, backend: str = DEFAULT_BACKEND, *, source: str = "") -> QuantizedModel:
    """A `QuantizedModel` of an already-quantized IR: every node's decision says whether the source quantized it.

    For a backend that folds constant math, quant types of side constants are dropped first (exact; see
    `float_side_constants`); where the backend moves 8-bit data through a multi-input op without requantizing, the
    op's types are unified (`unify-shared-ranges`). The lines are in `model.ctx.notes`."""
    verify(graph)
    target = get_backend(backend)
    ctx = PassContext()
    ctx.notes.extend(float_side_constants(graph, target.name))
    PassManager([UnifySharedRanges(backend=target.name)]).run(graph, ctx)
    for node in graph.nodes:
        quantized = _node_quantized(node)
        record(ctx, node, quantized, QUANTIZED_BY_SOURCE if quantized else FLOAT_IN_SOURCE)
    ctx.calibration = {"samples": 0, "source": source or "quantization parameters of the source model"}
    return QuantizedModel(graph, target.name, StaticQuantConfig(), ctx)


def _weight_mismatch(backend: str, w: Value, q: QuantType, axis: int) -> str | None:
    """How a weight's source type differs from the target's weight rule (None: it is what the target uses)."""
    target = get_backend(backend)
    rule, runtime = target.weight_rule, target.runtime
    if rule is None:
        return None
    if q.dtype is not rule.dtype:
        return f"weight %{w.name} is {q.dtype}; {runtime} wants {rule.dtype} weights"
    if rule.qmin is not None and w.const is not None and q.qmin < rule.qmin:
        lowest = int(np.min(quantize(w.const.numpy(), q), initial=0))  # Q/DQ records no range: read the codes
        if lowest < rule.qmin:
            return (f"weight %{w.name} uses code {lowest}; {runtime}'s rule is [{rule.qmin}, {rule.qmax}] (on CPUs "
                    "without VNNI such weights can saturate the u8 x s8 pair sums)")  # fmt: skip
    if np.any(q.zero_point != 0):
        return f"weight %{w.name} is asymmetric (zero point != 0); {runtime} runs asymmetric weights in FP32"
    g = q.granularity
    if g.kind is GranularityKind.PER_TENSOR:
        return f"weight %{w.name} is per tensor; {runtime}'s rule is per output channel (more accurate)"
    if g.kind is GranularityKind.PER_GROUP or g.axis != axis:
        return f"weight %{w.name} is {g.kind.value} on axis {g.axis}, not per output channel ({axis})"
    return None


def _weights(graph: Graph) -> list[tuple[Node, Value, QuantType, int]]:
    found = []
    for node in graph.nodes:
        if node.op_type not in COMPUTE_OPS:
            continue
        for i, axis in weight_inputs(node).items():
            w = node.inputs[i]
            if w is not None and w.const is not None and isinstance(w.quant, QuantType):
                found.append((node, w, w.quant, axis))
    return found


def target_differences(graph: Graph, backend: str) -> list[str]:
    """Where `backend`'s int8 rules differ from the source's: weights of another form than the target's rule, and
    every op the source quantized that the target's legalization keeps float (with the target's reason)."""
    target = get_backend(backend)
    lines = []
    for node, w, q, axis in _weights(graph):
        why = _weight_mismatch(target.name, w, q, axis)
        if why is not None:
            lines.append(f"{node.describe()}: {why}")
    clone = clone_graph(graph)[0]
    report = target.legalize(clone)  # drops the types of what it keeps float: ask the source graph what was quantized
    for node, row in zip(graph.nodes, aligned_rows(list(graph.nodes), report.nodes), strict=True):
        if row is not None and _node_quantized(node) and not row.quantized and node.op_type in COMPUTE_OPS:
            lines.append(f"{node.describe()}: quantized in the source, float on {target.runtime}: {row.reason}")
    for d in report.removed:
        lines.append(f"%{d.value}: quantized in the source, float on {target.runtime}: {d.reason}")
    return lines


def _payload_range(data: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    axes = tuple(a for a in range(data.ndim) if a != axis)
    return data.min(axis=axes), data.max(axis=axes)


def requantize(graph: Graph, backend: str) -> list[str]:
    """Give every constant weight of a quantized Conv/MatMul/Gemm whose type differs from `backend`'s weight rule
    that rule's type, computed from its (dequantized) payload with the target's convention; biases of the changed
    ops get the matching int32 type s_x·s_w, and so do float biases on a backend that needs int32 ones
    (its `int32_bias`). Activations keep their types. Returns one line per change."""
    target = get_backend(backend)
    rule = target.weight_rule
    convention = Convention[target.convention.upper()]
    changed = []
    for node, w, q, axis in _weights(graph):
        mismatch = _weight_mismatch(target.name, w, q, axis) is not None
        if mismatch:
            assert w.const is not None and rule is not None
            data = np.asarray(w.const.numpy(), dtype=np.float32)
            spec = QuantSpec(rule.dtype, rule.scheme, Granularity.per_channel(axis), "minmax", rule.qmin, rule.qmax)
            lo, hi = _payload_range(data, axis)
            w.quant = compute_qparams(lo, hi, spec, convention=convention)
            changed.append(f"%{w.name}: {_describe(q)} -> {_describe(w.quant)}")
        b_idx = traits_of(node.op_type, node.domain).bias
        b = node.inputs[b_idx] if b_idx is not None and b_idx < len(node.inputs) else None
        x = node.inputs[0]
        if b is None or b.const is None or x is None or not isinstance(x.quant, QuantType):
            continue
        assert isinstance(w.quant, QuantType)
        if isinstance(b.quant, QuantType) and mismatch:
            b.quant = bias_qparams(x.quant, w.quant)
            changed.append(f"%{b.name}: int32 bias rescaled to s_x·s_w")
        elif b.quant is None and target.int32_bias:
            b.quant = bias_qparams(x.quant, w.quant)
            changed.append(f"%{b.name}: float bias quantized to int32 at s_x·s_w ({target.runtime}'s fused kernels)")
    verify(graph)
    return changed


def _describe(q: QuantType) -> str:
    g = q.granularity
    where = g.kind.value if g.axis is None else f"{g.kind.value}({g.axis})"
    return f"{q.dtype} {q.scheme.value} {where} [{q.qmin}, {q.qmax}]"
