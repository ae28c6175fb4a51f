"""ONNX node attributes to IR `Attr`s, one rule per AttributeProto type.

Subgraph attributes (If/Loop/Scan bodies), sparse tensors, type protos and tensor lists have no IR form yet
and are refused with `UnsupportedOpError` naming the node, op and attribute.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx

from quantir.frontends.onnx.tensors import decode_tensor
from quantir.ir import Attr, AttrKind, UnsupportedOpError

__all__ = ["convert_attribute", "describe_node"]

AP = onnx.AttributeProto

_REFUSED: dict[int, str] = {
    AP.GRAPH: "holds a subgraph; control-flow subgraphs (If/Loop/Scan bodies) are not supported yet",
    AP.GRAPHS: "holds subgraphs; control-flow subgraphs (If/Loop/Scan bodies) are not supported yet",
    AP.SPARSE_TENSOR: "holds a sparse tensor, which quantir does not represent yet",
    AP.SPARSE_TENSORS: "holds sparse tensors, which quantir does not represent yet",
    AP.TYPE_PROTO: "holds a type proto, which quantir does not represent yet",
    AP.TYPE_PROTOS: "holds type protos, which quantir does not represent yet",
    AP.TENSORS: "holds a list of tensors, which quantir does not represent yet",
    AP.UNDEFINED: "has no type and no value",
}

_SCALAR_FIELDS = (("f", AP.FLOAT), ("i", AP.INT), ("s", AP.STRING), ("t", AP.TENSOR), ("g", AP.GRAPH))
_LIST_FIELDS = (("floats", AP.FLOATS), ("ints", AP.INTS), ("strings", AP.STRINGS), ("graphs", AP.GRAPHS))
"""Very old models leave `type` unset; the populated field then says what the attribute is."""


def describe_node(node: onnx.NodeProto) -> str:
    where = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
    return f"{where} node {node.name!r}" if node.name else f"{where} node (unnamed, output {list(node.output)[:1]})"


def _decode_string(raw: bytes, context: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsupportedOpError(f"{context} is not valid UTF-8 text") from None


_Rule = Callable[[AP, str, Path | None], Attr]

_RULES: dict[int, _Rule] = {
    AP.FLOAT: lambda a, c, b: Attr(AttrKind.FLOAT, float(a.f)),
    AP.INT: lambda a, c, b: Attr(AttrKind.INT, int(a.i)),
    AP.STRING: lambda a, c, b: Attr(AttrKind.STRING, _decode_string(a.s, c)),
    AP.TENSOR: lambda a, c, b: Attr(AttrKind.TENSOR, decode_tensor(a.t, b, what=c)),
    AP.FLOATS: lambda a, c, b: Attr(AttrKind.FLOATS, tuple(float(x) for x in a.floats)),
    AP.INTS: lambda a, c, b: Attr(AttrKind.INTS, tuple(int(x) for x in a.ints)),
    AP.STRINGS: lambda a, c, b: Attr(AttrKind.STRINGS, tuple(_decode_string(s, c) for s in a.strings)),
}


def convert_attribute(node: onnx.NodeProto, attr: AP, base_dir: Path | None) -> Attr:
    """The IR form of attribute `attr` of `node`."""
    context = f"{describe_node(node)}: attribute {attr.name!r}"
    if attr.ref_attr_name:
        raise UnsupportedOpError(
            f"{context} refers to function attribute {attr.ref_attr_name!r}, which is only valid inside a function"
        )
    kind = attr.type if attr.type != AP.UNDEFINED else _populated_type(attr)
    rule = _RULES.get(kind)
    if rule is None:
        reason = _REFUSED.get(kind, f"has unknown attribute type {kind}")
        raise UnsupportedOpError(f"{context} {reason}")
    return rule(attr, context, base_dir)


def _populated_type(attr: AP) -> int:
    for field, kind in _SCALAR_FIELDS:
        if attr.HasField(field):
            return kind
    for field, kind in _LIST_FIELDS:
        if len(getattr(attr, field)):
            return kind
    return AP.UNDEFINED
