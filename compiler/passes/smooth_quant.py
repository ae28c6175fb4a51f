"""`smooth-quant`: SmoothQuant (Xiao et al.; INC's `smooth_quant` recipe). For each activation X read by
quantized MatMul/Gemm with constant weights, per input channel k: s_k = max|X_k|^a / max|W_k|^(1-a); readers get
X / s through one inserted `Mul` (shared by all readers of X, so Q/K/V are smoothed jointly) and weights W * s.
The product is unchanged in float; per-tensor int8 of X / s loses far less to outlier channels.

Needs per-channel min/max of X from calibration (`select_smoothing_targets` names them before calibration); the
per-tensor range of X / s follows exactly from them, so no second calibration pass is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from quantir.compiler.decisions import record
from quantir.compiler.pass_manager import PassContext, PassResult, register_pass
from quantir.ir import GranularityKind, Graph, Node, PassError, QuantSpec, Tensor, TensorType, Value

__all__ = ["SmoothQuant", "select_smoothing_targets", "smoothable_inputs"]

_MIN_SCALE, _MAX_SCALE = 1e-5, 1e5


def _weight_rows(node: Node) -> np.ndarray | None:
    """|W| max per input channel of a MatMul (B is [K, N]) or Gemm (B is [K, N], or [N, K] with transB)."""
    w = node.inputs[1] if len(node.inputs) > 1 else None
    if w is None or w.const is None or not isinstance(w.quant, QuantSpec):
        return None
    data = np.abs(np.asarray(w.const.numpy(), dtype=np.float32))
    if data.ndim != 2:
        return None
    transposed = node.op_type == "Gemm" and bool(node.attr("transB", 0))
    return data.max(axis=0) if transposed else data.max(axis=1)


def _smoothable(node: Node) -> bool:
    if node.op_type == "Gemm":
        return not node.attr("transA", 0)
    return node.op_type == "MatMul"


def smoothable_inputs(graph: Graph) -> list[str]:
    """Activations of a float graph that SmoothQuant could smooth under some config: the data input of a MatMul/Gemm
    with a constant 2-D weight (their per-channel ranges are collected at calibration whatever the config)."""
    names: list[str] = []
    for node in graph.nodes:
        x = node.inputs[0] if node.inputs else None
        w = node.inputs[1] if len(node.inputs) > 1 else None
        if not _smoothable(node) or x is None or x.const is not None or w is None or w.const is None:
            continue
        if len(w.const.shape) == 2 and isinstance(x.type, TensorType) and x.type.rank:
            names.append(x.name)
    return list(dict.fromkeys(names))


def select_smoothing_targets(graph: Graph) -> dict[str, list[Node]]:
    """Activations (by name) whose quantized MatMul/Gemm readers can be smoothed, with those readers."""
    targets: dict[str, list[Node]] = {}
    for node in graph.nodes:
        x = node.inputs[0] if node.inputs else None
        if not _smoothable(node) or x is None or x.const is not None or _weight_rows(node) is None:
            continue
        spec = x.quant
        if not isinstance(spec, QuantSpec) or spec.granularity.kind is not GranularityKind.PER_TENSOR:
            continue
        if not isinstance(x.type, TensorType) or not x.type.rank:
            continue
        targets.setdefault(x.name, []).append(node)
    return targets


@register_pass
@dataclass(frozen=True, slots=True)
class SmoothQuant:
    name: ClassVar[str] = "smooth-quant"

    alpha: float = 0.5

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        targets, channel, ranges = ctx.smooth_targets, ctx.channel_ranges, ctx.ranges
        values = {v.name: v for v in graph.values()}
        changed = False
        for name, readers in targets.items():
            if name not in channel:
                raise PassError(f"smooth-quant: no per-channel range for %{name}; calibrate before smoothing")
            changed |= self._smooth(graph, values[name], readers, channel[name], ranges, ctx)
        return PassResult(changed)

    def _smooth(
        self,
        graph: Graph,
        x: Value,
        readers: list[Node],
        channel: tuple[np.ndarray, np.ndarray],
        ranges: dict[str, tuple[np.ndarray, np.ndarray]],
        ctx: PassContext,
    ) -> bool:
        lo, hi = (np.asarray(a, np.float64) for a in channel)
        act = np.maximum(np.abs(lo), np.abs(hi))
        rows = [r for r in (_weight_rows(n) for n in readers) if r is not None]
        if not rows or any(r.shape != act.shape for r in rows):
            return False
        wmax = np.max(np.stack(rows), axis=0).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.power(act, self.alpha) / np.power(wmax, 1.0 - self.alpha)
        s = np.where((act > 0) & (wmax > 0) & np.isfinite(s), np.clip(s, _MIN_SCALE, _MAX_SCALE), 1.0)
        inv = graph.add_constant(
            graph.fresh_name(f"{x.name}.smooth_inv_scale"), Tensor.from_numpy((1.0 / s).astype(np.float32))
        )
        smoothed = Value(graph.fresh_name(f"{x.name}.smoothed"), x.type, quant=x.quant)
        mul = Node(
            "Mul",
            [x, inv],
            [smoothed],
            name=graph.fresh_name(f"{x.name}_SmoothQuant", nodes=True),
            source=readers[0].source,
        )
        graph.insert_before(readers[0], mul)
        for node in readers:
            node.set_input(0, smoothed)
            w = node.inputs[1]
            assert w is not None and w.const is not None
            data = np.asarray(w.const.numpy(), dtype=np.float32)
            scale = s.astype(np.float32)
            scaled = data * (scale[None, :] if node.op_type == "Gemm" and node.attr("transB", 0) else scale[:, None])
            new_w = Tensor.from_numpy(np.ascontiguousarray(scaled), w.const.dtype)
            if len(w.uses()) == 1:
                w.const = new_w
            else:
                copy = graph.add_constant(graph.fresh_name(f"{w.name}.smoothed"), new_w, quant=w.quant)
                node.set_input(1, copy)
        if not (_quantized_readers(x, mul) or _is_kernel_output_quantizer(x)):
            x.quant = None
        ranges[smoothed.name] = (np.asarray(np.min(lo / s), np.float32), np.asarray(np.max(hi / s), np.float32))
        record(ctx, mul, False, f"SmoothQuant (alpha={self.alpha:g}): scales %{x.name} per channel so the "
               f"{len(readers)} MatMul/Gemm reading it quantize with less outlier loss")  # fmt: skip
        return True


def _is_kernel_output_quantizer(x: Value) -> bool:
    """x is a Relu/Clip output whose quantizer is also the output quantizer of the int8 kernel before it."""
    act = x.producer
    src = act.inputs[0] if act is not None and act.inputs else None
    if act is None or act.op_type not in ("Relu", "Clip") or src is None or src.producer is None or src.quant:
        return False
    return any(isinstance(i.quant, QuantSpec) for i in src.producer.inputs if i is not None)


def _quantized_readers(x: Value, smoothing: Node) -> bool:
    """Whether a reader other than the smoothing Mul still needs x's own quantization (an op left unsmoothed)."""
    return any(
        any(isinstance(o.quant, QuantSpec) for o in n.outputs if o is not None) for n in x.users() if n is not smoothing
    )
