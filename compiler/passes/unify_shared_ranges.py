"""`unify-shared-ranges{backend=...}`: where a backend moves 8-bit data through a multi-input op without
requantizing (its capability table says `drop` for an op whose traits share scales, e.g. OpenVINO's Concat), give
the op's quantized inputs and output one per-tensor type: the union of their representable ranges, through
`compute_qparams` with the backend's convention. A calibrated graph already shares these types (compute-qparams
groups them); an imported quantized model may not (ORT's QLinearConcat takes different scales)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from quantir.backends.legality import quant_type_of, same_params
from quantir.backends.registry import DEFAULT_BACKEND, get_backend
from quantir.compiler.pass_manager import PassContext, PassResult, register_pass
from quantir.compiler.qparams.scales import Convention, compute_qparams, unify_ranges
from quantir.ir import GranularityKind, Graph, QuantSpec, QuantType, traits_of
from quantir.ir.traits import UnitKind

__all__ = ["UnifySharedRanges"]


def _representable(q: QuantType) -> tuple[np.ndarray, np.ndarray]:
    zp, scale = float(q.zero_point), float(q.scale)
    return np.asarray(scale * (q.qmin - zp), np.float32), np.asarray(scale * (q.qmax - zp), np.float32)


@register_pass
@dataclass(frozen=True, slots=True)
class UnifySharedRanges:
    name: ClassVar[str] = "unify-shared-ranges"

    backend: str = DEFAULT_BACKEND

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        backend = get_backend(self.backend)
        convention = Convention[backend.convention.upper()]
        changed = False
        for node in graph.nodes:
            if backend.capabilities.kind(node.op_type) is not UnitKind.DROP:
                continue
            if not traits_of(node.op_type, node.domain).shared_scales:
                continue
            values = [v for v in (*node.inputs, *node.outputs) if v is not None]
            qs = [quant_type_of(v) for v in values]
            if any(q is None or q.granularity.kind is not GranularityKind.PER_TENSOR for q in qs):
                continue
            quants = [q for q in qs if q is not None]
            if len({q.dtype for q in quants}) > 1 or all(same_params(quants[0], q) for q in quants):
                continue
            lo, hi = unify_ranges([_representable(q) for q in quants])
            first = quants[0]
            spec = QuantSpec(first.dtype, first.scheme, first.granularity, first.observer, first.qmin, first.qmax)
            merged = compute_qparams(lo, hi, spec, convention=convention)
            for v in values:
                v.quant = merged
            ctx.notes.append(f"{node.describe()}: inputs and output share one range [{float(lo):.4g}, {float(hi):.4g}] "
                             f"({backend.runtime} moves 8-bit data through {node.op_type} without requantizing)")
            changed = True
        return PassResult(changed)
