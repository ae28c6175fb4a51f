"""Raise a graph's default-domain opset (to 13, where QuantizeLinear/DequantizeLinear take a per-channel `axis`),
rewriting each node whose op changed its inputs or meaning on the way so that it computes what it did.

Opset 11/12 models (PP-OCR, many exporters' defaults) meet the opset-13 changes: Squeeze/Unsqueeze/ReduceSum take
`axes` and Split takes `split` as an input instead of an attribute, Dropout takes `ratio` as an input (12), and
Softmax/LogSoftmax/Hardmax apply along one axis instead of over the flattened trailing dims. Each has an exact
rewrite here. An op whose change has no rewrite (e.g. Upsample, removed at 10) is refused, naming the node.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from quantir.backends.contract import ValueChange
from quantir.ir import DType, Graph, Node, PassError, Tensor, TensorType, Value
from quantir.ir.core import Attr
from quantir.ir.printer import format_context

__all__ = ["OPSET_SIGNATURE_CHANGES", "upgrade_opset", "upgrade_problem"]

OPSET_SIGNATURE_CHANGES: dict[str, tuple[int, ...]] = {
    "Add": (7,), "Sub": (7,), "Mul": (7,), "Div": (7,), "Gemm": (7,), "PRelu": (7,), "BatchNormalization": (7, 9),
    "Concat": (4,), "Reshape": (5,), "Tile": (6,), "Cast": (6,), "Upsample": (7, 9, 10), "Scan": (9,),
    "Slice": (10,), "TopK": (10,), "Clip": (11,), "Pad": (11,), "Resize": (11,), "Dropout": (12,),
    "Squeeze": (13,), "Unsqueeze": (13,), "Split": (13,), "ReduceSum": (13,), "Softmax": (13,),
    "LogSoftmax": (13,), "Hardmax": (13,), "GRU": (7,), "LSTM": (7,), "RNN": (7,),
}  # fmt: skip
"""Opset versions (up to 13) at which an op's inputs, attributes or meaning changed, so that a node written for an
older opset may be invalid at the newer one (ONNX Changelog). Changes that only add types or optional attributes
are not listed."""

Rewrite = Callable[[Graph, Node], bool]
"""Rewrites a node for the new opset in place; False when the node already means the same there."""


def _attr_to_input(attr: str, index: int, dtype: DType) -> Rewrite:
    """Move attribute `attr` (a list of ints or a float) to a constant input at `index`."""

    def rewrite(graph: Graph, node: Node) -> bool:
        a = node.attrs.pop(attr, None)
        if a is None:
            return False  # absent: the input stays absent, which means the same default
        value = np.asarray(a.value, dtype=dtype.storage)
        name = graph.fresh_name(f"{node.name or node.op_type}_{attr}")
        const = graph.add_constant(name, Tensor.from_numpy(value))
        while len(node.inputs) < index:
            node.append_input(None)
        node.append_input(const)
        return True

    return rewrite


def _single_axis(graph: Graph, node: Node) -> bool:
    """Softmax-like before 13 flattens dims [axis:] into one and normalizes over it; from 13 it normalizes along
    `axis` only. The same when `axis` is the last dim; otherwise Flatten -> op(axis=1) -> Reshape(Shape(x))."""
    x, y = node.inputs[0], node.outputs[0]
    assert x is not None and y is not None
    axis = int(node.attr("axis", 1))  # type: ignore[arg-type]
    rank = x.type.rank if isinstance(x.type, TensorType) else None
    if rank is not None and axis % max(rank, 1) == rank - 1:
        return False
    base = node.name or node.op_type
    dtype = x.type.dtype if isinstance(x.type, TensorType) else DType.F32
    flat = Value(graph.fresh_name(f"{x.name}_flat"), TensorType(dtype, (None, None)))
    flatten = Node("Flatten", [x], [flat], attrs={"axis": _int(axis)},
                   name=graph.fresh_name(f"{base}_flatten", nodes=True), source=node.source)  # fmt: skip
    graph.insert_before(node, flatten)
    shape = Value(graph.fresh_name(f"{x.name}_shape"), TensorType(DType.I64, (rank,)))
    graph.insert_before(node, Node("Shape", [x], [shape], name=graph.fresh_name(f"{base}_shape", nodes=True),
                                   source=node.source))  # fmt: skip
    out = Value(graph.fresh_name(f"{y.name}_flat"), TensorType(dtype, (None, None)))
    replacement = Node(node.op_type, [flat], [out], attrs={"axis": _int(1)}, name=node.name, source=node.source)
    reshape = Value(graph.fresh_name(f"{y.name}_reshaped"), y.type)
    graph.insert_before(node, replacement)
    back = Node("Reshape", [out, shape], [reshape], name=graph.fresh_name(f"{base}_reshape", nodes=True),
                source=node.source)  # fmt: skip
    graph.insert_before(node, back)
    reshape.quant, y.quant = y.quant, None
    y.replace_all_uses_with(reshape, graph_outputs=graph)
    node.name = ""
    graph.erase(node)
    reshape.name = y.name  # the op's result keeps its name (a graph output keeps the model's interface)
    return True


def _int(value: int) -> Attr:
    return Attr.of(value)


_REWRITES: dict[tuple[str, int], Rewrite] = {
    ("Dropout", 12): _attr_to_input("ratio", 1, DType.F32),
    ("Squeeze", 13): _attr_to_input("axes", 1, DType.I64),
    ("Unsqueeze", 13): _attr_to_input("axes", 1, DType.I64),
    ("ReduceSum", 13): _attr_to_input("axes", 1, DType.I64),
    ("Split", 13): _attr_to_input("split", 1, DType.I64),
    ("Softmax", 13): _single_axis,
    ("LogSoftmax", 13): _single_axis,
    ("Hardmax", 13): _single_axis,
}
"""(op, opset of the change) -> the rewrite that keeps a node's meaning across it."""


def _changes(node: Node, old: int, new: int) -> list[int]:
    if node.domain not in ("", "ai.onnx"):
        return []
    return [v for v in OPSET_SIGNATURE_CHANGES.get(node.op_type, ()) if old < v <= new]


def upgrade_problem(graph: Graph, new: int) -> tuple[Node, int] | None:
    """The first node (and the opset of its change) that cannot be carried from the graph's opset to `new`."""
    for node in graph.nodes:
        for version in _changes(node, graph.opset, new):
            if (node.op_type, version) not in _REWRITES:
                return node, version
    return None


def upgrade_opset(graph: Graph, new: int, *, why: str = "") -> list[ValueChange]:
    """Raise the default-domain opset of `graph` (mutated) to `new`, rewriting the nodes whose ops changed; returns
    one record per rewritten node (for the legalize report's `changed`). Raises `PassError` naming the first node no
    rewrite can carry (nothing changed)."""
    old = graph.opset
    if new <= old:
        return []
    blocker = upgrade_problem(graph, new)
    if blocker is not None:
        node, version = blocker
        raise PassError(
            f"{node.describe()}: {why or f'opset {new} is needed'}, but the graph is opset {old} and {node.op_type} "
            f"changed its inputs or meaning at opset {version}, which quantir cannot rewrite.\n"
            f"{format_context(graph, node)}\n  hint: convert the float model first "
            f"(onnx.version_converter.convert_version(model, {new})) and import it again"
        )
    changes = []
    for node in list(graph.nodes):
        for version in _changes(node, old, new):
            label = node.describe()
            if _REWRITES[(node.op_type, version)](graph, node):
                changes.append(ValueChange(label, f"{label}: rewritten for opset {version}"))
    key = "ai.onnx" if "ai.onnx" in graph.opset_imports and "" not in graph.opset_imports else ""
    graph.opset_imports[key] = new
    return changes
