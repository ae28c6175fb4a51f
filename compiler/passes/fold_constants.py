"""`fold-constants`: evaluate layout and cast ops whose inputs are all constants (Transpose of a Linear weight,
Reshape, (Un)Squeeze, Flatten, Cast), so weights reach their consumers as constants that can be quantized.

The folded constant keeps the parameter's name when the original has no other reader (provenance), else gets
`<name>.folded`. Rules are a table of numpy evaluators keyed by op type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from quantir.compiler.pass_manager import PassContext, PassResult, register_pass
from quantir.ir import DType, Graph, Node, Tensor, Value

__all__ = ["FoldConstants"]

Evaluator = Callable[[Node, list[np.ndarray]], np.ndarray]


def _ints(node: Node, name: str) -> list[int] | None:
    value = node.attr(name)
    return list(value) if isinstance(value, tuple) else None  # type: ignore[arg-type]


def _axes(node: Node, args: list[np.ndarray]) -> list[int] | None:
    """Axes from the attribute (older opsets) or the second input (opset 13+)."""
    if len(args) > 1:
        return [int(a) for a in args[1].reshape(-1)]
    return _ints(node, "axes")


def _transpose(node: Node, args: list[np.ndarray]) -> np.ndarray:
    perm = _ints(node, "perm")
    return np.transpose(args[0], perm)


def _reshape(node: Node, args: list[np.ndarray]) -> np.ndarray:
    shape = [int(d) for d in args[1].reshape(-1)]
    if not node.attr("allowzero", 0):
        shape = [args[0].shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return args[0].reshape(shape)


def _unsqueeze(node: Node, args: list[np.ndarray]) -> np.ndarray:
    axes = _axes(node, args) or []
    out = args[0]
    rank = out.ndim + len(axes)
    for a in sorted(a % rank for a in axes):
        out = np.expand_dims(out, a)
    return out


def _squeeze(node: Node, args: list[np.ndarray]) -> np.ndarray:
    axes = _axes(node, args)
    return np.squeeze(args[0], axis=None if axes is None else tuple(a % args[0].ndim for a in axes))


def _flatten(node: Node, args: list[np.ndarray]) -> np.ndarray:
    axis = int(node.attr("axis", 1))  # type: ignore[arg-type]
    x = args[0]
    axis %= max(x.ndim, 1) if axis < 0 else x.ndim + 1
    lead = int(np.prod(x.shape[:axis])) if axis else 1
    return x.reshape(lead, -1)


_EVALUATORS: dict[str, Evaluator] = {
    "Transpose": _transpose,
    "Reshape": _reshape,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Flatten": _flatten,
}

_FOLDABLE_DTYPES = (DType.F32, DType.F64, DType.F16, DType.I64, DType.I32, DType.I8, DType.U8, DType.BOOL)


@register_pass
@dataclass(frozen=True, slots=True)
class FoldConstants:
    name: ClassVar[str] = "fold-constants"

    max_bytes: int = 1 << 30
    """Do not materialize folded constants larger than this."""

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        changed = False
        for node in graph.nodes:
            if node.domain not in ("", "ai.onnx") or node.op_type not in _EVALUATORS:
                continue
            inputs = [v for v in node.inputs if v is not None]
            out = node.outputs[0] if node.outputs else None
            if out is None or not inputs or any(v.const is None for v in inputs) or graph.is_output(out):
                continue
            source = inputs[0]
            assert source.const is not None
            if source.const.dtype not in _FOLDABLE_DTYPES or source.const.nbytes > self.max_bytes:
                continue
            result = _EVALUATORS[node.op_type](node, [np.asarray(v.const.numpy()) for v in inputs])  # type: ignore[union-attr]
            tensor = Tensor.from_numpy(np.ascontiguousarray(result), source.const.dtype)
            sole_reader = len(source.uses()) == 1 and not graph.is_output(source)
            out.replace_all_uses_with(self._constant(graph, source, tensor, sole_reader))
            graph.erase(node)
            for v in inputs:
                if v.name in graph.constants and not v.has_uses() and not graph.is_output(v):
                    graph.remove_constant(v)
            changed = True
        return PassResult(changed)

    @staticmethod
    def _constant(graph: Graph, source: Value, tensor: Tensor, reuse_name: bool) -> Value:
        if reuse_name:
            # The parameter in a new layout keeps its name; the old constant is removed once unread.
            name = source.name
            graph.constants.pop(name)
            source.name = graph.fresh_name(name + ".unfolded")
            graph.constants[source.name] = source
            return graph.add_constant(name, tensor)
        return graph.add_constant(graph.fresh_name(source.name + ".folded"), tensor)
