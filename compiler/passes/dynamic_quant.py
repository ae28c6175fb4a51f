"""`dynamic-quant`: post-training dynamic quantization (`DynamicQuantConfig`). Each MatMul/Gemm with a constant 2-D
weight gets an int8 symmetric weight type from the weight's own range (per output channel by default, stored as one
group spanning K: the blocked layout both runtimes' compressed-weight paths read) and a *dynamic* activation spec,
`QuantSpec(u8, asym, per_tensor, observer="dynamic")`, which stays a spec: its scale and zero point are computed by
the runtime from each batch (ONNX DynamicQuantizeLinear semantics). No calibration data is needed. The config
resolves per op with INC's rules; every heavy op gets a decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from quantir.backends.registry import DEFAULT_BACKEND, get_backend
from quantir.compiler.config.dynamic_config import DynamicQuantConfig
from quantir.compiler.config.resolve import op_ref, resolve_op_configs
from quantir.compiler.decisions import record
from quantir.compiler.isa import default_reduce_range
from quantir.compiler.pass_manager import PassContext, PassResult, register_pass
from quantir.compiler.passes.weight_only_rtn import constant_weight, weight_only_ops
from quantir.compiler.qparams.scales import Convention, compute_qparams
from quantir.ir import ConfigError, DType, Granularity, GranularityKind, Graph, Node, QuantSpec, Scheme, Value
from quantir.ir.types import DYNAMIC_OBSERVER

__all__ = ["DynamicQuant", "dynamic_spec"]


def dynamic_spec() -> QuantSpec:
    """uint8 asymmetric per tensor, from each batch's range: ONNX DynamicQuantizeLinear, what every runtime has."""
    return QuantSpec(DType.U8, Scheme.ASYM, Granularity.per_tensor(), DYNAMIC_OBSERVER)


def _weight(node: Node) -> tuple[Value, int] | None:
    """The constant 2-D weight and its input-channel axis (`constant_weight`), of an op whose data input is not
    transposed (a Gemm with transA has no dynamic kernel)."""
    if node.op_type == "Gemm" and node.attr("transA", 0):
        return None
    return constant_weight(node)


@register_pass
@dataclass(frozen=True, slots=True)
class DynamicQuant:
    name: ClassVar[str] = "dynamic-quant"
    config: DynamicQuantConfig
    backend: str = DEFAULT_BACKEND

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        backend = get_backend(self.backend)
        nodes = weight_only_ops(graph)
        refs = [op_ref(n, i) for i, n in enumerate(nodes)]
        changed = False
        for node, res in zip(nodes, resolve_op_configs(self.config, refs), strict=True):
            if not res.quantize:
                record(ctx, node, False, res.reason)
                continue
            found = _weight(node)
            if found is None:
                what = "Conv" if node.op_type.startswith("Conv") else f"this {node.op_type} (no constant 2-D weight)"
                record(ctx, node, False, f"dynamic quantization covers MatMul/Gemm with constant weights, not {what}")
                continue
            if res.weight is None or res.activation is None:
                record(ctx, node, False, f"{res.reason}: dynamic quantization needs both weights and activations")
                continue
            act = res.activation
            if (act.dtype, act.scheme, act.granularity) != (DType.U8, Scheme.ASYM, GranularityKind.PER_TENSOR):
                raise ConfigError(f"op {node.name!r}: dynamic activations are uint8 asymmetric per tensor (ONNX "
                                  f"DynamicQuantizeLinear, which {backend.runtime} runs); got {act.dtype} "
                                  f"{act.scheme.value} {act.granularity.value}")  # fmt: skip
            if res.weight.dtype is not DType.I8 or res.weight.scheme is not Scheme.SYM:
                raise ConfigError(f"op {node.name!r}: dynamic quantization takes int8 symmetric weights (w_dtype="
                                  f"'int8', w_sym=True); got {res.weight.dtype} {res.weight.scheme.value}")  # fmt: skip
            w, k_axis = found
            x = node.inputs[0]
            assert w.const is not None and x is not None
            data = np.asarray(w.const.numpy(), dtype=np.float32)
            per_channel = res.weight.granularity is GranularityKind.PER_CHANNEL
            reduce = default_reduce_range() if res.reduce_range is None else res.reduce_range
            if per_channel:  # one group spanning K per output channel: the layout compressed-weight kernels read
                spec = QuantSpec(DType.I8, Scheme.SYM, Granularity.per_group(k_axis, data.shape[k_axis]), "minmax")
                lo, hi = data.min(axis=k_axis, keepdims=True), data.max(axis=k_axis, keepdims=True)
            else:
                spec = QuantSpec(DType.I8, Scheme.SYM, Granularity.per_tensor(), "minmax")
                lo, hi = np.array(data.min()), np.array(data.max())
            w.quant = compute_qparams(np.minimum(lo, 0), np.maximum(hi, 0), spec, convention=Convention.ORT,
                                      reduce_range=reduce)  # fmt: skip
            if not (isinstance(x.quant, QuantSpec) and x.quant.dynamic):
                x.quant = dynamic_spec()
            weights = "per output channel" if per_channel else "per tensor"
            rr = ", 7-bit (reduce_range)" if reduce else ""
            record(ctx, node, True, f"{res.reason.split(' -> ')[0]} -> dynamic int8: weights int8 sym {weights}{rr}, "
                                    "activations uint8 from each batch at run time")  # fmt: skip
            changed = True
        ctx.recipes.append(f"dynamic quantization for {backend.name} (no calibration)")
        return PassResult(changed)
