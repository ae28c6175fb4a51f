"""`canonicalize`: fold inference-mode BatchNormalization, a per-channel constant Add (a bias exported as its own
node, as Paddle does) and a per-channel constant Mul (the learnable scale of re-parameterized blocks) into the
preceding Conv/Gemm; a 2-D MatMul by a constant weight becomes a Gemm to take a bias. The conv keeps its provenance
and parameter names; its output takes the folded node's name. Dropout and Identity are removed. Rules are a table
keyed by op type; each rule either rewrites and returns None, or returns why it did not apply (for the debug log),
mutating nothing before it has decided.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from quantir.compiler.pass_manager import PassContext, PassResult, register_pass
from quantir.ir import DType, Graph, Node, Tensor, TensorType, Value

__all__ = ["Canonicalize"]

Rule = Callable[[Graph, Node], str | None]


def _const(v: Value | None) -> np.ndarray | None:
    return None if v is None or v.const is None else np.asarray(v.const.numpy())


def _knows_more(a: object, b: object) -> bool:
    """`a` is a tensor type with a rank where `b` is untyped or a tensor type of the same dtype without one."""
    if not isinstance(a, TensorType) or a.shape is None:
        return False
    return b is None or (isinstance(b, TensorType) and a.dtype == b.dtype and b.shape is None)


def _forward(graph: Graph, node: Node, source: Value, *, takes_name: bool = False) -> str | None:
    """Make every reader of the node's first output read `source` instead, then erase the node. `takes_name`:
    `source` now computes what the node's output did (a folded node), so it takes that name, which keeps names
    meaning the same tensor as in the source model (`quantir layers --float` compares by name)."""
    out = node.outputs[0]
    if out is None:
        return "no output"
    if graph.is_output(out):
        if graph.is_output(source) or source in graph.inputs or source.const is not None:
            return "its output is a graph output fed directly by an input or constant"
        # Keep the graph output's name: rename the forwarded value instead of the output. Keep its declared type
        # too where it says more (ONNX requires a shape on graph outputs; the source's rank may be unknown, e.g.
        # after a Reshape to a computed shape).
        out.replace_all_uses_with(source, graph_outputs=graph)
        graph.erase(node)
        source.name, out.name = out.name, source.name
        if _knows_more(out.type, source.type):
            source.type = out.type
        return None
    out.replace_all_uses_with(source)
    graph.erase(node)
    if takes_name:
        source.name, out.name = out.name, source.name
    return None


def _remove_dropout(graph: Graph, node: Node) -> str | None:
    if (
        len(node.outputs) > 1
        and node.outputs[1] is not None
        and (node.outputs[1].has_uses() or graph.is_output(node.outputs[1]))
    ):
        return "its mask output is used"
    training = node.inputs[2] if len(node.inputs) > 2 else None
    if training is not None:
        flag = _const(training)
        if flag is None or bool(flag.reshape(-1)[0]):
            return "training_mode is not a constant false"
    src = node.inputs[0]
    return "no data input" if src is None else _forward(graph, node, src)


def _remove_identity(graph: Graph, node: Node) -> str | None:
    src = node.inputs[0]
    return "no input" if src is None else _forward(graph, node, src)


def _bn_params(node: Node) -> tuple[np.ndarray, np.ndarray] | str:
    """(multiplier, shift) per channel: y = x * multiplier + shift."""
    if node.attr("training_mode", 0):
        return "training_mode is set"
    if len(node.outputs) > 1 and any(v is not None and v.has_uses() for v in node.outputs[1:]):
        return "running statistics outputs are used"
    params = [_const(v) for v in node.inputs[1:5]]
    if len(params) != 4 or any(p is None for p in params):
        return "scale, bias, mean and variance are not all constants"
    scale, bias, mean, var = (np.asarray(p, np.float64) for p in params)  # type: ignore[arg-type]
    eps = float(node.attr("epsilon", 1e-5))  # type: ignore[arg-type]
    mult = scale / np.sqrt(var + eps)
    return mult, bias - mean * mult


def _producer_weights(graph: Graph, bn: Node, data: int = 0) -> tuple[Node, int, int, int] | str:
    """The Conv/Gemm feeding input `data` of `bn`, with (weight input, output-channel axis, bias input)."""
    x = bn.inputs[data]
    prod = x.producer if x is not None else None
    if prod is None or x is None:
        return "its input is not produced by a node"
    if len(x.uses()) != 1 or graph.is_output(x):
        return f"the {prod.op_type} output has other readers"
    if prod.op_type == "Conv":
        return prod, 1, 0, 2
    if prod.op_type == "Gemm" and not prod.attr("transA", 0) and float(prod.attr("alpha", 1.0)) == 1.0:  # type: ignore[arg-type]
        return prod, 1, (0 if prod.attr("transB", 0) else 1), 2
    if prod.op_type == "MatMul" and _is_gemm_shaped(prod):
        return prod, 1, 1, 2  # becomes a Gemm if it takes a bias (`_take_bias`)
    return f"its producer is {prod.op_type}, not Conv, Gemm or a 2-D MatMul with a constant weight"


def _is_gemm_shaped(matmul: Node) -> bool:
    """A MatMul of a rank-2 activation by a constant 2-D weight: a Gemm without bias. With its bias Add folded it
    must be one, or ONNX Runtime fuses MatMul+Add into a float Gemm before its QDQ fusion sees the MatMul."""
    x, w = (*matmul.inputs, None, None)[:2]
    return (
        x is not None and isinstance(x.type, TensorType) and x.type.rank == 2 and x.const is None
        and w is not None and w.const is not None and len(w.const.shape) == 2
    )  # fmt: skip


def _fold_batchnorm(graph: Graph, bn: Node) -> str | None:
    params = _bn_params(bn)
    return params if isinstance(params, str) else _fold_affine(graph, bn, 0, *params)


def _fold_affine(
    graph: Graph, node: Node, data: int, mult: np.ndarray | None, shift: np.ndarray | None, named: Value | None = None
) -> str | None:
    """Fold `node` (y = x * mult + shift per output channel, x its input `data`) into the Conv/Gemm producing x:
    the weights are scaled by `mult` and the bias becomes bias * mult + shift. A bias the Conv/Gemm did not have
    takes the name of `named` (the folded node's constant), else its weight's."""
    found = _producer_weights(graph, node, data)
    if isinstance(found, str):
        return found
    prod, w_idx, axis, b_idx = found
    w_val = prod.inputs[w_idx]
    w = _const(w_val)
    if w is None or w_val is None or w_val.dtype not in (DType.F32, DType.F64, DType.F16):
        return f"the {prod.op_type} weight is not a float constant"
    channels = w.shape[axis]
    b_val = prod.inputs[b_idx] if len(prod.inputs) > b_idx else None
    b = _const(b_val) if b_val is not None else np.zeros(channels, w.dtype)
    if b is None or b.shape != (channels,):
        return f"the {prod.op_type} bias is not a constant per output channel"
    scale, offset = _per_channel(mult, channels, 1.0), _per_channel(shift, channels, 0.0)
    if scale is None or offset is None:
        return f"its constants do not match the {channels} output channels"
    beta = float(prod.attr("beta", 1.0)) if prod.op_type == "Gemm" else 1.0  # type: ignore[arg-type]
    if mult is not None:
        shape = [1] * w.ndim
        shape[axis] = -1
        prod.set_input(w_idx, _replacement(graph, w_val, (w.astype(np.float64) * scale.reshape(shape)).astype(w.dtype)))
    if b_val is None and shift is None:
        return _forward(graph, node, prod.output(), takes_name=True)  # a scale alone: no bias to make
    new_b = ((b.astype(np.float64) * beta) * scale + offset).astype(w.dtype)
    if b_val is not None or named is not None:
        bias_value = _replacement(graph, b_val if b_val is not None else named, new_b)  # type: ignore[arg-type]
    else:
        bias_value = _new_bias(graph, w_val, new_b)
    return _take_bias(graph, prod, b_idx, bias_value, node)


def _per_channel(v: np.ndarray | None, channels: int, default: float) -> np.ndarray | None:
    """`v` (a scalar or one value per channel) as a float64 vector of `channels`; None if it has another size."""
    flat = np.full(1, default) if v is None else np.asarray(v, np.float64).reshape(-1)
    return np.broadcast_to(flat, (channels,)) if flat.size in (1, channels) else None


def _take_bias(graph: Graph, prod: Node, b_idx: int, bias: Value, folded: Node) -> str | None:
    """Make `bias` the Conv/Gemm's bias (a Gemm's beta is folded into it), then remove `folded`."""
    if prod.op_type == "MatMul":
        prod.op_type = "Gemm"  # same math for a rank-2 input (`_is_gemm_shaped`), and it takes the bias
    while len(prod.inputs) <= b_idx:
        prod.append_input(None)
    prod.set_input(b_idx, bias)
    prod.attrs.pop("beta", None)
    return _forward(graph, folded, prod.output(), takes_name=True)


def _channel_constant(graph: Graph, node: Node) -> tuple[int, np.ndarray] | str:
    """For a binary node reading a Conv/Gemm output and a constant that varies only along the output channel:
    (the data input's index, the constant)."""
    if len(node.inputs) != 2 or node.inputs[0] is None or node.inputs[1] is None:
        return "it does not have two inputs"
    consts = [_const(v) for v in node.inputs]
    side = 1 if consts[1] is not None else 0 if consts[0] is not None else -1
    if side < 0:
        return "neither input is a constant"
    c = consts[side]
    assert c is not None
    found = _producer_weights(graph, node, data=1 - side)
    if isinstance(found, str):
        return found
    prod, w_idx, axis, _ = found
    w = _const(prod.inputs[w_idx])
    if w is None or c.dtype != w.dtype:
        return f"the {prod.op_type} weight is not a constant of the constant's dtype"
    rank = w.ndim if prod.op_type == "Conv" else 2
    shape = (1,) * (rank - c.ndim) + c.shape
    if c.ndim > rank or any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, w.shape[axis]):
        return f"the constant's shape {list(c.shape)} varies along more than the output channel"
    return 1 - side, c


def _fold_bias_add(graph: Graph, add: Node) -> str | None:
    """Conv/Gemm -> Add(constant that varies only along the output channel) becomes the Conv/Gemm's bias. Left as
    an Add, the constant would be quantized as an activation and the Conv's output requantized before it."""
    found = _channel_constant(graph, add)
    if isinstance(found, str):
        return found
    return _fold_affine(graph, add, found[0], None, found[1], named=add.inputs[1 - found[0]])


def _fold_scale_mul(graph: Graph, mul: Node) -> str | None:
    """Conv/Gemm -> Mul(constant that varies only along the output channel), e.g. the learnable scale of a
    re-parameterized block, scales the weights and bias. Left as a Mul, the Conv's output would be requantized
    before and after it."""
    found = _channel_constant(graph, mul)
    return found if isinstance(found, str) else _fold_affine(graph, mul, found[0], found[1], None)


def _replacement(graph: Graph, old: Value, data: np.ndarray) -> Value:
    """A constant holding `data`: `old` itself if nothing else reads it (keeping its parameter name)."""
    tensor = Tensor.from_numpy(np.ascontiguousarray(data), old.dtype)
    if len(old.uses()) == 1 and old.name in graph.constants and not graph.is_output(old):
        old.const = tensor
        old.type = TensorType(tensor.dtype, tensor.shape)  # a folded bias may change shape ([1, C, 1, 1] -> [C])
        return old
    return graph.add_constant(graph.fresh_name(old.name + ".folded"), tensor)


def _new_bias(graph: Graph, weight: Value, data: np.ndarray) -> Value:
    stem = weight.name[: -len(".weight")] if weight.name.endswith(".weight") else weight.name
    return graph.add_constant(graph.fresh_name(stem + ".bias"), Tensor.from_numpy(data, weight.dtype))


_RULES: dict[str, Rule] = {
    "Add": _fold_bias_add,
    "BatchNormalization": _fold_batchnorm,
    "Dropout": _remove_dropout,
    "Identity": _remove_identity,
    "Mul": _fold_scale_mul,
}


@register_pass
@dataclass(frozen=True, slots=True)
class Canonicalize:
    name: ClassVar[str] = "canonicalize"

    fold_batchnorm: bool = True
    """Fold BatchNormalization into a preceding Conv/Gemm."""

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        changed = False
        for node in graph.nodes:
            if node.graph is not graph or node.domain not in ("", "ai.onnx"):
                continue
            rule = _RULES.get(node.op_type)
            if rule is None or (node.op_type == "BatchNormalization" and not self.fold_batchnorm):
                continue
            why_not = rule(graph, node)
            if why_not is None:
                changed = True
            else:
                ctx.notes.append(f"canonicalize: kept {node.describe()}: {why_not}")
        return PassResult(changed)
