"""The verifier: structure (order, use lists, names, types) and quantization types.

Each failure names the node (and its source module) and shows the IR around it.
"""

from __future__ import annotations

import math

import numpy as np

from quantir.ir.core import Graph, Node, Usage, Value
from quantir.ir.errors import VerifyError
from quantir.ir.traits import traits_of
from quantir.ir.types import GranularityKind, QuantSpec, QuantType, Scheme, TensorType

__all__ = ["verify"]


def _fail(graph: Graph, node: Node | None, message: str, hint: str = "") -> VerifyError:
    from quantir.ir.printer import format_context

    text = message
    if node is not None:
        text = f"{node.describe()}: {message}"
    if hint:
        text += f"\n  hint: {hint}"
    if node is not None:
        text += "\n" + format_context(graph, node)
    return VerifyError(text)


def verify(graph: Graph) -> None:
    """Raise `VerifyError` on the first violated invariant."""
    defined: set[int] = set()
    names: dict[str, str] = {}

    def define(v: Value, what: str, node: Node | None) -> None:
        if v.name in names:
            raise _fail(graph, node, f"value name %{v.name} is defined twice ({names[v.name]} and {what})",
                        "rename one of them; names must be unique in a graph")  # fmt: skip
        names[v.name] = what
        defined.add(id(v))

    for v in graph.inputs:
        if v.producer is not None or v.const is not None:
            raise _fail(graph, None, f"graph input %{v.name} must not be produced by a node or be a constant")
        define(v, "a graph input", None)
    for name, v in graph.constants.items():
        if v.const is None:
            raise _fail(graph, None, f"constant %{name} has no payload")
        if v.name != name:
            raise _fail(graph, None, f"constant registered as {name!r} is named %{v.name}")
        expected = TensorType(v.const.dtype, v.const.shape)
        if v.type != expected:
            raise _fail(graph, None, f"constant %{name} has type {v.type} but its payload is {expected}")
        define(v, "a constant", None)
        _check_quant(graph, None, v)

    for node in graph.nodes:
        if node.graph is not graph:
            raise _fail(graph, node, "node does not point back to this graph")
        for i, inp in enumerate(node.inputs):
            if inp is None:
                continue
            if id(inp) not in defined:
                later = inp.producer is not None and inp.producer.graph is graph
                raise _fail(
                    graph, node, f"input {i} %{inp.name} is used before it is defined",
                    "nodes must be in topological order" if later else "the value is not in this graph",
                )  # fmt: skip
            if Usage(node, i) not in inp._uses:
                raise _fail(graph, node, f"use list of %{inp.name} lacks input {i}", "edit inputs with set_input()")
        for i, out in enumerate(node.outputs):
            if out is None:
                continue
            if out.producer is not node or out.index != i:
                raise _fail(graph, node, f"output {i} %{out.name} does not point back to this node")
            define(out, f"output {i} of {node.describe()}", node)
            _check_quant(graph, node, out)
        _check_shared_scales(graph, node)

    for val in graph.values():
        for usage in val._uses:
            n = usage.node
            if n.graph is not graph:
                raise _fail(graph, None, f"%{val.name} is used by {n.describe()}, which is not in the graph",
                            "erase nodes with Graph.erase() so use lists stay consistent")  # fmt: skip
            if usage.idx >= len(n.inputs) or n.inputs[usage.idx] is not val:
                raise _fail(graph, n, f"use list of %{val.name} says input {usage.idx}, which is not %{val.name}")
    for i, res in enumerate(graph.outputs):
        if id(res) not in defined:
            raise _fail(graph, None, f"graph output {i} %{res.name} is not defined in the graph")


def _check_quant(graph: Graph, node: Node | None, v: Value) -> None:
    q = v.quant
    if q is None:
        return
    where = f"%{v.name}"
    if not isinstance(v.type, TensorType) or v.type.dtype.is_integer or not v.type.dtype.is_float:
        raise _fail(graph, node, f"{where} has a quantization type but is not a float tensor ({v.type})")
    g = q.granularity
    rank = v.type.rank
    if g.axis is not None and rank is not None and not -rank <= g.axis < rank:
        raise _fail(graph, node, f"{where}: quantization axis {g.axis} is out of range for rank {rank}")
    if isinstance(q, QuantSpec):
        return
    assert isinstance(q, QuantType)
    scale, zp = q.scale, q.zero_point
    if not np.all(np.isfinite(scale)) or not np.all(scale > 0):
        bad = scale[~(np.isfinite(scale) & (scale > 0))].reshape(-1)[:3].tolist()
        raise _fail(graph, node, f"{where}: scales must be finite and > 0; found {bad}",
                    "a zero scale usually means the tensor was constant during calibration")  # fmt: skip
    if q.dtype.is_integer:
        if not q.qmin < q.qmax:
            raise _fail(graph, node, f"{where}: qmin {q.qmin} must be below qmax {q.qmax}")
        lo, hi = q.dtype.int_range
        if q.qmin < lo or q.qmax > hi:
            raise _fail(graph, node, f"{where}: range [{q.qmin}, {q.qmax}] does not fit {q.dtype} [{lo}, {hi}]")
        if np.any(zp < q.qmin) or np.any(zp > q.qmax):
            raise _fail(graph, node, f"{where}: zero point outside [{q.qmin}, {q.qmax}]: {zp.reshape(-1)[:3].tolist()}")
        if q.scheme is Scheme.SYM and q.dtype in (q.dtype.I8, q.dtype.I4, q.dtype.I16) and np.any(zp != 0):
            raise _fail(graph, node, f"{where}: symmetric signed quantization needs zero point 0")
    shape = v.type.shape
    if g.kind is GranularityKind.PER_TENSOR and scale.size != 1:
        raise _fail(graph, node, f"{where}: per_tensor quantization has {scale.size} scales")
    if g.kind is GranularityKind.PER_CHANNEL and shape is not None and g.axis is not None:
        dim = shape[g.axis]
        if isinstance(dim, int) and (scale.ndim != 1 or scale.shape[0] != dim):
            raise _fail(graph, node, f"{where}: per_channel({g.axis}) needs {dim} scales, found shape {scale.shape}")
    if g.kind is GranularityKind.PER_GROUP and shape is not None and g.axis is not None and g.group_size:
        dim = shape[g.axis]
        if isinstance(dim, int):
            want = [d for d in shape]
            want[g.axis] = math.ceil(dim / g.group_size)
            if all(isinstance(d, int) for d in want) and list(scale.shape) != want:
                raise _fail(graph, node, f"{where}: per_group({g.axis}, {g.group_size}) needs scales of shape "
                            f"{want}, found {list(scale.shape)}")  # fmt: skip


def _check_shared_scales(graph: Graph, node: Node) -> None:
    if not traits_of(node.op_type, node.domain).shared_scales:
        return
    qs = [v.quant for v in (*node.inputs, *node.outputs) if v is not None and isinstance(v.quant, QuantType)]
    if len(qs) > 1 and any(q != qs[0] for q in qs[1:]):
        raise _fail(graph, node, f"{node.op_type} needs one shared scale and zero point on its quantized inputs "
                    "and output", "run compute_qparams, which unifies shared scales")  # fmt: skip
