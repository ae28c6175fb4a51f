"""`weight-only-awq`: activation-aware weight quantization (Lin et al.; INC's `AWQConfig`), from the same streamed
calibration statistics as GPTQ: per MatMul/Gemm input x, its Hessian H = 2/n Σ xᵀx and mean |x| per channel.

- `use_auto_scale`: for the readers of one x (Q, K and V share theirs), s = mean|x|^a normalized to a geometric
  mean of 1, with a in 0, 0.05, ..., 0.95 chosen to minimize Σ_readers tr(ΔWᵀ H ΔW), the exact calibration output
  error of round-to-nearest of diag(s)·W, rescaled by 1/s. The readers then read x/s through one inserted Mul and
  hold diag(s)·W, which is the same product in float.
- `use_auto_clip`: per group and output channel, the clip ratio in 1, 0.95, ..., 0.55 of the group's range that
  minimizes its output error Δwᵀ H_gg Δw (the Hessian block of the group's input channels).

Quantization is then RTN's (`WeightOnlyRTN`: the same op rules and decisions) with these clipped grids. The scale
search uses the global config's weight type (set_local may change a reader's type afterwards).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from quantir.backends.registry import DEFAULT_BACKEND, get_backend
from quantir.compiler.config.resolve import FieldResolution
from quantir.compiler.config.weight_only_config import AWQConfig, weight_bits
from quantir.compiler.decisions import record
from quantir.compiler.pass_manager import PassContext, PassResult, register_pass
from quantir.compiler.passes.weight_only_gptq import layer_inputs
from quantir.compiler.passes.weight_only_rtn import WeightOnlyRTN
from quantir.compiler.qparams.weight_only import rtn_qtype
from quantir.ir import Graph, Node, QuantType, Tensor, Value
from quantir.ir.quant_math import fake_quantize

__all__ = ["WeightOnlyAWQ"]

_ALPHAS = np.arange(20) / 20.0
_CLIPS = 1.0 - np.arange(10) / 20.0


def _output_error(dw: np.ndarray, h: np.ndarray) -> float:
    """tr(ΔWᵀ H ΔW) for ΔW [K, N]: the calibration output error of a weight change."""
    return float(np.sum((h @ dw) * dw))


def _readers(x: Value) -> list[Node]:
    """The MatMuls with a constant 2-D weight that read `x` as their data input."""
    return [u.node for u in x.uses()
            if u.idx == 0 and u.node.op_type == "MatMul" and u.node.inputs[1] is not None
            and u.node.inputs[1].const is not None and len(u.node.inputs[1].const.shape) == 2]  # fmt: skip


def _scales(mean: np.ndarray, a: float) -> np.ndarray:
    """AWQ's per-channel scales mean|x|^a, normalized to a geometric mean of 1 (of the extremes)."""
    s = np.power(np.maximum(mean, 1e-8), a)
    return s / np.sqrt(s.max() * s.min())


@register_pass
@dataclass(frozen=True, slots=True)
class WeightOnlyAWQ:
    name: ClassVar[str] = "weight-only-awq"
    config: AWQConfig
    backend: str = DEFAULT_BACKEND

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        cfg = self.config
        glob = cfg.per_op_fields()
        bits, sym, group, full = (
            weight_bits(glob),
            bool(glob["use_sym"]),
            int(glob["group_size"]),
            bool(glob["use_full_range"]),
        )

        def rtn(w: np.ndarray) -> np.ndarray:
            return fake_quantize(w, rtn_qtype(w, axis=0, group_size=group, bits=bits, sym=sym, full_range=full))

        scaled = 0
        if cfg.use_auto_scale:
            values = {v.name: v for v in graph.values()}
            for name in layer_inputs(graph):
                x = values[name]
                readers = _readers(x)
                h, mean = ctx.hessians.get(name), ctx.channel_means.get(name)
                if not readers or h is None or mean is None:
                    continue
                weights = [np.asarray(n.inputs[1].const.numpy(), np.float64) for n in readers]  # type: ignore[union-attr]
                best, best_err = 0.0, np.inf
                for a in _ALPHAS:
                    s = _scales(mean, float(a))
                    err = sum(_output_error(rtn(w * s[:, None]) / s[:, None] - w, h) for w in weights)
                    if err < best_err:
                        best, best_err = float(a), err
                if best == 0.0:
                    continue
                self._apply_scale(graph, ctx, x, readers, _scales(mean, best), best)
                scaled += 1
        hessians = ctx.hessians

        def clipped(node: Node, res: FieldResolution, data: np.ndarray, axis: int) -> QuantType:
            v = res.values
            b, sy, fr = weight_bits(v), bool(v["use_sym"]), bool(v["use_full_range"])
            g = v["group_size"]
            assert isinstance(g, int)
            x = node.inputs[0]
            h = hessians.get(x.name) if x is not None else None
            base = rtn_qtype(data, axis=axis, group_size=g, bits=b, sym=sy, full_range=fr)
            if not cfg.use_auto_clip or h is None or axis != 0:
                return base
            size = base.granularity.group_size or data.shape[0]
            best_scale, best_zp = base.scale.copy(), base.zero_point.copy()
            best_err = np.full(base.scale.shape, np.inf)
            for r in _CLIPS:
                q = rtn_qtype(data * np.float32(r), axis=0, group_size=g, bits=b, sym=sy, full_range=fr)
                dw = (fake_quantize(data, q) - data).astype(np.float64)
                for gi in range(base.scale.shape[0]):
                    rows = slice(gi * size, min((gi + 1) * size, data.shape[0]))
                    e = np.sum((h[rows, rows] @ dw[rows]) * dw[rows], axis=0)
                    better = e < best_err[gi]
                    best_err[gi] = np.where(better, e, best_err[gi])
                    best_scale[gi] = np.where(better, q.scale[gi], best_scale[gi])
                    best_zp[gi] = np.where(better, q.zero_point[gi], best_zp[gi])
            return QuantType(
                base.dtype, base.scheme, base.granularity, best_scale, best_zp, base.qmin, base.qmax, "awq"
            )

        result = WeightOnlyRTN(config=cfg, backend=self.backend, weight_math=clipped, algorithm="AWQ").run(graph, ctx)
        ctx.recipes[-1] = (f"weight-only AWQ for {get_backend(self.backend).name}: {scaled} input(s) scaled, "
                           f"clip search {'on' if cfg.use_auto_clip else 'off'}")  # fmt: skip
        return PassResult(result.changed or scaled > 0)

    @staticmethod
    def _apply_scale(graph: Graph, ctx: PassContext, x: Value, readers: list[Node], s: np.ndarray, a: float) -> None:
        """Readers read x/s through one Mul and hold diag(s)·W; the scaled input's Hessian is diag(1/s) H diag(1/s)."""
        inv = graph.add_constant(
            graph.fresh_name(f"{x.name}.awq_inv_scale"), Tensor.from_numpy((1 / s).astype(np.float32))
        )
        out = Value(graph.fresh_name(f"{x.name}.awq_scaled"), x.type)
        mul = Node("Mul", [x, inv], [out], name=graph.fresh_name(f"{x.name}_AWQ", nodes=True), source=readers[0].source)
        graph.insert_before(readers[0], mul)
        for node in readers:
            node.set_input(0, out)
            w = node.inputs[1]
            assert w is not None and w.const is not None
            new_w = Tensor.from_numpy(
                (np.asarray(w.const.numpy(), np.float32) * s[:, None].astype(np.float32)), w.const.dtype
            )
            if len(w.uses()) == 1:
                w.const = new_w
            else:
                node.set_input(1, graph.add_constant(graph.fresh_name(f"{w.name}.awq"), new_w))
        h = ctx.hessians.get(x.name)
        if h is not None:
            ctx.hessians[out.name] = h / np.outer(s, s)
        record(ctx, mul, False, f"AWQ: scales %{x.name} per channel by mean|x|^{a:g} so the {len(readers)} MatMul(s) "
                                "reading it keep their salient weights more precisely")  # fmt: skip
