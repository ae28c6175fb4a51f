"""`compute-qparams`: turn ranges into QuantTypes. Weights take their range from their payload (per channel);
activations from calibration. Values that must share one scale (scale-transparent ops, Concat) are grouped
and get one QuantType from the union of their ranges. Biases of quantized Conv/Gemm become int32 with scale
s_x * s_w.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from quantir.compiler.decisions import record
from quantir.compiler.pass_manager import PassContext, PassResult, register_pass
from quantir.compiler.qparams.scales import Convention, bias_qparams, compute_qparams, unify_ranges
from quantir.ir import GranularityKind, Graph, PassError, QuantSpec, QuantType, Value, traits_of

__all__ = ["ComputeQParams"]

Range = tuple[np.ndarray, np.ndarray]

UNREPRESENTABLE = 1e30
"""Ranges reaching this magnitude hold fill constants (e.g. an attention mask's finfo(float32).min), not data."""


def _payload_range(v: Value, spec: QuantSpec) -> Range:
    assert v.const is not None
    data = np.asarray(v.const.numpy(), dtype=np.float32)
    g = spec.granularity
    if g.kind is GranularityKind.PER_TENSOR:
        return np.asarray(data.min() if data.size else 0.0), np.asarray(data.max() if data.size else 0.0)
    if g.kind is GranularityKind.PER_CHANNEL:
        assert g.axis is not None
        axes = tuple(a for a in range(data.ndim) if a != g.axis % data.ndim)
        return data.min(axis=axes), data.max(axis=axes)
    raise PassError(f"constant %{v.name}: per_group ranges come from weight-only passes, not compute-qparams")


class _Groups:
    """Union-find over value names."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


def _shared_groups(graph: Graph) -> _Groups:
    groups = _Groups()
    for node in graph.nodes:
        t = traits_of(node.op_type, node.domain)
        if not (t.scale_transparent or t.shared_scales):
            continue
        out = node.outputs[0] if node.outputs else None
        if out is None or not isinstance(out.quant, QuantSpec):
            continue
        members = node.inputs[:1] if t.scale_transparent else node.inputs
        for v in members:
            if (
                v is not None
                and v.const is None
                and isinstance(v.quant, QuantSpec)
                and v.quant.granularity.kind is GranularityKind.PER_TENSOR
            ):
                groups.union(v.name, out.name)
    return groups


@register_pass
@dataclass(frozen=True, slots=True)
class ComputeQParams:
    name: ClassVar[str] = "compute-qparams"

    convention: str = "ort"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        convention = Convention[self.convention.upper()]
        ranges: dict[str, Range] = dict(ctx.ranges)
        values = [v for v in graph.values() if isinstance(v.quant, QuantSpec)]
        for v in values:
            if v.const is not None and v.name not in ranges:
                assert isinstance(v.quant, QuantSpec)
                ranges[v.name] = _payload_range(v, v.quant)
        missing = [v.name for v in values if v.name not in ranges]
        if missing:
            raise PassError(f"no calibrated range for {len(missing)} quantized values (first: %{missing[0]}); "
                            "run the calibrate pass before compute-qparams")  # fmt: skip
        values = self._drop_unrepresentable(graph, values, ranges, ctx)
        groups = _shared_groups(graph)
        members: dict[str, list[str]] = {}
        for v in values:
            members.setdefault(groups.find(v.name), []).append(v.name)
        group_range = {root: unify_ranges([ranges[n] for n in names]) for root, names in members.items()}
        group_type: dict[str, QuantType] = {}
        for v in values:
            spec = v.quant
            assert isinstance(spec, QuantSpec)
            root = groups.find(v.name)
            if root in group_type and len(members[root]) > 1:
                v.quant = group_type[root]
                continue
            rmin, rmax = group_range[root] if len(members[root]) > 1 else ranges[v.name]
            # reduce_range is already in the spec's qmin/qmax (annotate narrows weight specs).
            qtype = compute_qparams(rmin, rmax, spec, convention=convention)
            v.quant = group_type[root] = qtype
        self._quantize_biases(graph)
        return PassResult(bool(values))

    @staticmethod
    def _drop_unrepresentable(
        graph: Graph, values: list[Value], ranges: dict[str, Range], ctx: PassContext
    ) -> list[Value]:
        """Leave float any activation whose range holds a fill constant: one int8 grid cannot cover it and data."""
        kept = []
        for v in values:
            lo, hi = ranges[v.name]
            extent = float(max(np.max(np.abs(lo)), np.max(np.abs(hi))))
            if v.const is not None or extent < UNREPRESENTABLE:
                kept.append(v)
                continue
            v.quant = None
            reason = (f"%{v.name} reaches {float(np.min(lo)):.3g}..{float(np.max(hi)):.3g} (a fill constant such as an "
                      "attention mask): int8 cannot represent it, so it stays float")  # fmt: skip
            for node in [n for n in (v.producer, *v.users()) if n is not None]:
                record(ctx, node, False, reason)
        return kept

    @staticmethod
    def _quantize_biases(graph: Graph) -> None:
        for node in graph.nodes:
            b_idx = traits_of(node.op_type, node.domain).bias
            if b_idx is None or b_idx >= len(node.inputs):
                continue
            x, w, b = node.inputs[0], node.inputs[1], node.inputs[b_idx]
            if b is None or b.const is None or b.quant is not None or x is None or w is None:
                continue
            quantized = isinstance(x.quant, QuantType) and isinstance(w.quant, QuantType) and x.quant.dtype.is_integer
            if quantized and len(b.uses()) == 1:
                assert isinstance(x.quant, QuantType) and isinstance(w.quant, QuantType)
                b.quant = bias_qparams(x.quant, w.quant)
