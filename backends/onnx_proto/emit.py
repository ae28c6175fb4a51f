"""Lower a float IR graph to an ONNX `ModelProto`: the ONNX lowering shared by the onnx_qdq backend and calibration.

Constants become initializers, node names and provenance (`quantir.source.module` / `quantir.source.type` in
`metadata_props`) are kept, typed intermediate values get `value_info`. Quantization annotations are ignored:
this is float emission. How constant payloads are stored is the caller's choice (`TensorPlacer`): inline here,
streamed to an external file by `save_model`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib import metadata
from typing import Any

import onnx

from quantir.ir import (
    AttrKind,
    DType,
    Graph,
    Node,
    OptionalType,
    SequenceType,
    SerializationError,
    Tensor,
    TensorType,
)
from quantir.ir.types import ValueType

__all__ = ["PROTO_LIMIT", "TensorPlacer", "build_model", "emit_model", "inline_tensor", "type_proto"]

PROTO_LIMIT = (2 << 30) - (64 << 20)
"""Largest payload an in-memory ModelProto may hold: protobuf's 2 GiB limit, less headroom for the graph."""

SOURCE_MODULE = "quantir.source.module"
SOURCE_TYPE = "quantir.source.type"

DEFAULT_DOMAIN_VERSIONS = {"com.microsoft": 1, "ai.onnx.ml": 3, "ai.onnx.preview.training": 1}
"""Opset versions assumed for a domain a node uses but the graph does not import."""

TensorPlacer = Callable[[onnx.TensorProto, str, Tensor], None]
"""Fills an initializer proto with a named constant: inline bytes, or a reference to external data."""


def inline_tensor(proto: onnx.TensorProto, name: str, tensor: Tensor) -> None:
    """Fill `proto` with `tensor`, its data inline (raw_data, or string_data for strings)."""
    proto.name = name
    proto.data_type = tensor.dtype.onnx_code
    proto.dims.extend(tensor.shape)
    if tensor.dtype is DType.STRING:
        proto.string_data.extend(
            s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in tensor.numpy().reshape(-1)
        )
    else:
        proto.raw_data = b"".join(tensor.iter_bytes())


def type_proto(t: ValueType) -> onnx.TypeProto:
    """The ONNX form of an IR value type."""
    tp = onnx.TypeProto()
    if isinstance(t, TensorType):
        tp.tensor_type.elem_type = t.dtype.onnx_code
        if t.shape is not None:
            shape = tp.tensor_type.shape
            shape.SetInParent()
            for d in t.shape:
                dim = shape.dim.add()
                if isinstance(d, int):
                    dim.dim_value = d
                elif isinstance(d, str):
                    dim.dim_param = d
    elif isinstance(t, SequenceType):
        tp.sequence_type.elem_type.CopyFrom(type_proto(t.elem))
    elif isinstance(t, OptionalType):
        tp.optional_type.elem_type.CopyFrom(type_proto(t.elem))
    else:
        raise SerializationError(f"value type {t!r} has no ONNX form")
    return tp


def _value_info(name: str, t: ValueType | None) -> onnx.ValueInfoProto:
    vi = onnx.ValueInfoProto(name=name)
    if t is not None:
        vi.type.CopyFrom(type_proto(t))
    return vi


AP = onnx.AttributeProto

_ATTR_RULES: dict[AttrKind, Callable[[AP, Any], None]] = {
    AttrKind.INT: lambda a, v: setattr(a, "i", v),
    AttrKind.FLOAT: lambda a, v: setattr(a, "f", v),
    AttrKind.STRING: lambda a, v: setattr(a, "s", v.encode("utf-8")),
    AttrKind.TENSOR: lambda a, v: inline_tensor(a.t, "", v),
    AttrKind.INTS: lambda a, v: a.ints.extend(v),
    AttrKind.FLOATS: lambda a, v: a.floats.extend(v),
    AttrKind.STRINGS: lambda a, v: a.strings.extend(s.encode("utf-8") for s in v),
}
"""How each attribute kind's value (already checked by `Attr`) is stored in an AttributeProto."""
_ATTR_TYPES = {
    AttrKind.INT: AP.INT,
    AttrKind.FLOAT: AP.FLOAT,
    AttrKind.STRING: AP.STRING,
    AttrKind.TENSOR: AP.TENSOR,
    AttrKind.INTS: AP.INTS,
    AttrKind.FLOATS: AP.FLOATS,
    AttrKind.STRINGS: AP.STRINGS,
}


def _node_proto(node: Node) -> onnx.NodeProto:
    proto = onnx.NodeProto(
        op_type=node.op_type,
        domain=node.domain,
        name=node.name,
        input=[v.name if v is not None else "" for v in node.inputs],
        output=[v.name if v is not None else "" for v in node.outputs],
    )
    for name, attr in node.attrs.items():
        a = proto.attribute.add(name=name, type=_ATTR_TYPES[attr.kind])
        _ATTR_RULES[attr.kind](a, attr.value)
    if node.source is not None:
        proto.metadata_props.add(key=SOURCE_MODULE, value=node.source.module)
        proto.metadata_props.add(key=SOURCE_TYPE, value=node.source.module_type)
    return proto


def _opset_imports(graph: Graph) -> dict[str, int]:
    opsets = dict(graph.opset_imports)
    for node in graph:
        domain = node.domain
        if domain in opsets or (domain in ("", "ai.onnx") and ({"", "ai.onnx"} & opsets.keys())):
            continue
        opsets[domain] = DEFAULT_DOMAIN_VERSIONS.get(domain, 1)
    return opsets


def _ir_version(graph: Graph, opsets: dict[str, int]) -> int:
    ids = [onnx.helper.make_opsetid(d, v) for d, v in opsets.items()]
    needed = onnx.helper.find_min_ir_version_for(ids, ignore_unknown=True)
    # IR < 4 requires every initializer to be a graph input; the IR keeps constants apart from inputs.
    return max(graph.ir_version, needed, 4 if graph.constants else 3)


@functools.cache
def _producer_version() -> str:
    try:
        return metadata.version("quantir")
    except metadata.PackageNotFoundError:
        return "0"


def build_model(graph: Graph, *, place: TensorPlacer, producer: str = "quantir") -> onnx.ModelProto:
    """The ModelProto of `graph`, with each constant turned into an initializer by `place`.

    The proto is filled in place (protobuf copies messages on assignment), so each payload is held once.
    """
    opsets = _opset_imports(graph)
    model = onnx.ModelProto(
        ir_version=_ir_version(graph, opsets), producer_name=producer, producer_version=_producer_version()
    )
    model.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in opsets.items())
    g = model.graph
    g.name = graph.name
    for kind, values, field in (("input", graph.inputs, g.input), ("output", graph.outputs, g.output)):
        for v in values:
            if v.type is None:
                raise SerializationError(
                    f"graph {kind} %{v.name} has no type; ONNX requires a type on every graph "
                    f"{kind} (run shape inference or set Value.type)"
                )
            field.append(_value_info(v.name, v.type))
    for name, v in graph.constants.items():
        assert v.const is not None
        place(g.initializer.add(), name, v.const)
    outputs = {id(v) for v in graph.outputs}
    for node in graph:
        g.node.append(_node_proto(node))
        g.value_info.extend(
            _value_info(v.name, v.type)
            for v in node.outputs
            if v is not None and v.type is not None and id(v) not in outputs
        )
    return model


def emit_model(graph: Graph, *, producer: str = "quantir") -> onnx.ModelProto:
    """The float ONNX model of `graph`, with every constant inline. Use `save_model` for models over 2 GB."""
    total = sum(v.const.nbytes for v in graph.constants.values() if v.const is not None)
    if total > PROTO_LIMIT:
        raise SerializationError(
            f"graph {graph.name!r} has {total / 2**30:.2f} GiB of constants, over protobuf's 2 GiB limit for an "
            "in-memory model; write it with save_model(graph, path, external_data=True)"
        )
    return build_model(graph, place=inline_tensor, producer=producer)
