"""Structural equality of graphs: same topology, names, types, attributes, quant types and constants.

`first_difference` explains the first mismatch in words; `structurally_equal` is its boolean form.
"""

from __future__ import annotations

import numpy as np

from quantir.ir.core import Attr, AttrKind, Graph, Node, Value
from quantir.ir.tensor import Tensor

__all__ = ["first_difference", "structurally_equal", "tensors_equal"]


def tensors_equal(a: Tensor, b: Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    x, y = a.numpy(), b.numpy()
    if x.dtype.kind == "f" or x.dtype.kind == "c":
        return bool(np.array_equal(x, y, equal_nan=True))
    return bool(np.array_equal(x, y))


def _attr_equal(a: Attr, b: Attr) -> bool:
    if a.kind != b.kind:
        return False
    if a.kind is AttrKind.TENSOR:
        assert isinstance(a.value, Tensor) and isinstance(b.value, Tensor)
        return tensors_equal(a.value, b.value)
    if a.kind is AttrKind.FLOAT:
        return bool(np.array_equal(np.float64(a.value), np.float64(b.value), equal_nan=True))  # type: ignore[arg-type]
    if a.kind is AttrKind.FLOATS:
        return bool(np.array_equal(np.asarray(a.value), np.asarray(b.value), equal_nan=True))
    return a.value == b.value


def _value_diff(a: Value, b: Value, where: str) -> str | None:
    if a.name != b.name:
        return f"{where}: value named %{a.name} vs %{b.name}"
    if a.type != b.type:
        return f"{where}: %{a.name} has type {a.type} vs {b.type}"
    if a.quant != b.quant:
        return f"{where}: %{a.name} has quantization {a.quant} vs {b.quant}"
    if (a.const is None) != (b.const is None):
        return f"{where}: %{a.name} is a constant in only one graph"
    if a.const is not None and b.const is not None and not tensors_equal(a.const, b.const):
        return f"{where}: constant %{a.name} has different contents"
    return None


def _positions(g: Graph) -> dict[int, str]:
    """Identity -> a position key that names the same value in any structurally equal graph."""
    pos: dict[int, str] = {id(v): f"in{i}" for i, v in enumerate(g.inputs)}
    pos.update({id(v): f"const:{name}" for name, v in g.constants.items()})
    for n_idx, n in enumerate(g.nodes):
        for o_idx, v in enumerate(n.outputs):
            if v is not None:
                pos[id(v)] = f"n{n_idx}.{o_idx}"
    return pos


def _node_diff(x: Node, y: Node, index: int, pa: dict[int, str], pb: dict[int, str]) -> str | None:
    where = f"node {index} ({x.op_type} {x.name!r})"
    for field in ("op_type", "domain", "name", "source"):
        if getattr(x, field) != getattr(y, field):
            return f"{where}: {field} {getattr(x, field)!r} vs {getattr(y, field)!r}"
    if x.attrs.keys() != y.attrs.keys():
        return f"{where}: attributes {sorted(x.attrs)} vs {sorted(y.attrs)}"
    for k in x.attrs:
        if not _attr_equal(x.attrs[k], y.attrs[k]):
            return f"{where}: attribute {k} = {x.attrs[k].value!r} vs {y.attrs[k].value!r}"
    if len(x.inputs) != len(y.inputs) or len(x.outputs) != len(y.outputs):
        return f"{where}: {len(x.inputs)}->{len(x.outputs)} vs {len(y.inputs)}->{len(y.outputs)} inputs->outputs"
    for i, (u, v) in enumerate(zip(x.inputs, y.inputs, strict=True)):
        if (u is None) != (v is None):
            return f"{where}: input {i} is absent in only one graph"
        if u is not None and v is not None and pa.get(id(u), "?a") != pb.get(id(v), "?b"):
            return f"{where}: input {i} is %{u.name} vs %{v.name}"
    for i, (u, v) in enumerate(zip(x.outputs, y.outputs, strict=True)):
        if (u is None) != (v is None):
            return f"{where}: output {i} is absent in only one graph"
        if u is not None and v is not None:
            d = _value_diff(u, v, where)
            if d:
                return d
    return None


def first_difference(a: Graph, b: Graph) -> str | None:
    """The first structural difference between `a` and `b`, in words, or None if they are equal."""
    if a.name != b.name:
        return f"graph name {a.name!r} vs {b.name!r}"
    if a.opset_imports != b.opset_imports:
        return f"opset imports {a.opset_imports} vs {b.opset_imports}"
    if a.ir_version != b.ir_version:
        return f"ir_version {a.ir_version} vs {b.ir_version}"
    if len(a.inputs) != len(b.inputs):
        return f"{len(a.inputs)} vs {len(b.inputs)} graph inputs"
    for i, (u, v) in enumerate(zip(a.inputs, b.inputs, strict=True)):
        d = _value_diff(u, v, f"graph input {i}")
        if d:
            return d
    if a.constants.keys() != b.constants.keys():
        only_a = sorted(a.constants.keys() - b.constants.keys())[:5]
        only_b = sorted(b.constants.keys() - a.constants.keys())[:5]
        return f"constants differ: only in first {only_a}, only in second {only_b}"
    for name, u in a.constants.items():
        d = _value_diff(u, b.constants[name], "constants")
        if d:
            return d
    if len(a) != len(b):
        return f"{len(a)} vs {len(b)} nodes"
    pa, pb = _positions(a), _positions(b)
    for i, (x, y) in enumerate(zip(a.nodes, b.nodes, strict=True)):
        d = _node_diff(x, y, i, pa, pb)
        if d:
            return d
    if len(a.outputs) != len(b.outputs):
        return f"{len(a.outputs)} vs {len(b.outputs)} graph outputs"
    for i, (u, v) in enumerate(zip(a.outputs, b.outputs, strict=True)):
        if pa.get(id(u), "?a") != pb.get(id(v), "?b") or u.name != v.name:
            return f"graph output {i} is %{u.name} vs %{v.name}"
    return None


def structurally_equal(a: Graph, b: Graph) -> bool:
    return first_difference(a, b) is None
