"""`fold-constants`: evaluate layout and cast ops whose inputs are all constants (Transpose of a Linear weight,
Reshape, (Un)Squeeze, Flatten, Cast, Shape of a constant, Expand, and CastLike, whose second input only names a
dtype), so weights reach their consumers as constants that can be quantized. torch's dynamo exporter gives a
bias-free Conv a zero bias computed as Expand(CastLike(0, x), Shape(weight)[0:1]); folded, a BatchNorm after it
folds into the Conv.

The folded constant keeps the parameter's name when the original has no other reader (provenance), else gets
`<name>.folded`. Rules are a table of numpy evaluators keyed by op type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from quantir.compiler.pass_manager import PassContext, PassResult, register_pass
from quantir.ir import DType, Graph, Node, Tensor, TensorType, Value

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


def _shape(node: Node, args: list[np.ndarray]) -> np.ndarray:
    dims = list(args[0].shape)
    start, end = node.attr("start", 0), node.attr("end")
    stop = None if end is None else int(end)  # type: ignore[arg-type]
    return np.array(dims[int(start) : stop], np.int64)  # type: ignore[arg-type]


def _expand(node: Node, args: list[np.ndarray]) -> np.ndarray:
    shape = np.broadcast_shapes(args[0].shape, tuple(int(d) for d in args[1].reshape(-1)))
    return np.array(np.broadcast_to(args[0], shape))


def _cast_target(node: Node) -> DType | None:
    try:
        return DType.from_onnx(int(node.attr("to", 0)))  # type: ignore[arg-type]
    except (ValueError, KeyError, TypeError):
        return None


def _cast(node: Node, args: list[np.ndarray]) -> np.ndarray:
    target = _cast_target(node)
    assert target is not None
    return args[0].astype(target.storage)


def _cast_like(node: Node, args: list[np.ndarray]) -> np.ndarray:
    like = node.inputs[1]
    assert like is not None and isinstance(like.type, TensorType)
    return args[0].astype(like.type.dtype.storage)


_EVALUATORS: dict[str, Evaluator] = {
    "Transpose": _transpose,
    "Reshape": _reshape,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Flatten": _flatten,
    "Shape": _shape,
    "Expand": _expand,
    "Cast": _cast,
    "CastLike": _cast_like,
}
_NEW_VALUES = frozenset({"Shape", "Expand"})
_DTYPE_ONLY_INPUTS = {"CastLike": 1}
"""Inputs an op reads only for their dtype: they need a known type, not a constant value."""


def _folded_size(node: Node, inputs: list[np.ndarray]) -> int:
    """Bytes of the result, checked before an Expand materializes it."""
    if node.op_type == "Expand" and len(inputs) == 2:
        try:
            shape = np.broadcast_shapes(inputs[0].shape, tuple(int(d) for d in inputs[1].reshape(-1)))
        except ValueError:
            return -1  # does not broadcast: left for the runtime to report
        return int(np.prod(shape)) * inputs[0].itemsize
    return 0


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
            dtype_only = _DTYPE_ONLY_INPUTS.get(node.op_type)
            inputs = [v for i, v in enumerate(node.inputs) if v is not None and i != dtype_only]
            out = node.outputs[0] if node.outputs else None
            if out is None or not inputs or any(v.const is None for v in inputs) or graph.is_output(out):
                continue
            if dtype_only is not None:
                like = node.inputs[dtype_only] if len(node.inputs) > dtype_only else None
                if like is None or not isinstance(like.type, TensorType) or like.type.dtype not in _FOLDABLE_DTYPES:
                    continue
            source = inputs[0]
            assert source.const is not None
            if source.const.dtype not in _FOLDABLE_DTYPES or source.const.nbytes > self.max_bytes:
                continue
            if node.op_type == "Cast" and _cast_target(node) not in _FOLDABLE_DTYPES:
                continue
            values = [np.asarray(v.const.numpy()) for v in inputs]  # type: ignore[union-attr]
            if not 0 <= _folded_size(node, values) <= self.max_bytes:
                continue
            result = _EVALUATORS[node.op_type](node, values)
            # Shape and the casts change the dtype: the result's own; layout ops keep the source's (f16 storage).
            dtype = source.const.dtype if result.dtype == source.const.dtype.storage else None
            tensor = Tensor.from_numpy(np.array(result, order="C"), dtype)  # ascontiguousarray makes 0-d 1-d
            # A parameter in a new layout or dtype keeps its name; a Shape or Expand result is a new value.
            sole_reader = len(source.uses()) == 1 and not graph.is_output(source) and node.op_type not in _NEW_VALUES
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
