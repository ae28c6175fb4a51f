"""ONNX value types to IR types, and ONNX shape inference run without loading any weights.

Inference runs on a skeleton of the model in which large and external initializers are plain typed inputs,
so a multi-gigabyte model is never copied. Strict inference with data propagation is tried first, then
non-strict; if both fail, intermediate values simply stay untyped.
"""

from __future__ import annotations

import onnx

from quantir.frontends.onnx.tensors import dtype_of
from quantir.ir import OptionalType, SequenceType, TensorType, UnsupportedOpError
from quantir.ir.types import Dim, ValueType

__all__ = ["infer_value_types", "value_type"]

_INLINE_LIMIT = 1 << 16
"""Initializers up to this many bytes stay in the skeleton, so data propagation can read shape constants."""


def value_type(tp: onnx.TypeProto, *, what: str) -> ValueType | None:
    """The IR type of an ONNX TypeProto; None when it is unset or has no IR form (maps, sparse tensors)."""
    kind = tp.WhichOneof("value")
    if kind == "tensor_type":
        tt = tp.tensor_type
        if tt.elem_type == onnx.TensorProto.UNDEFINED:
            return None
        dtype = dtype_of(tt.elem_type, what=what)
        if not tt.HasField("shape"):
            return TensorType(dtype, None)
        return TensorType(dtype, tuple(_dim(d) for d in tt.shape.dim))
    if kind == "sequence_type":
        elem = value_type(tp.sequence_type.elem_type, what=what)
        return SequenceType(elem) if elem is not None else None
    if kind == "optional_type":
        elem = value_type(tp.optional_type.elem_type, what=what)
        return OptionalType(elem) if elem is not None else None
    return None


def _dim(d: onnx.TensorShapeProto.Dimension) -> Dim:
    which = d.WhichOneof("value")
    if which == "dim_value":
        return int(d.dim_value) if d.dim_value >= 0 else None
    if which == "dim_param" and d.dim_param:
        return d.dim_param
    return None


def required_type(vi: onnx.ValueInfoProto, *, what: str) -> ValueType:
    """The type of a graph input or output, which ONNX requires and the IR must represent."""
    t = value_type(vi.type, what=what)
    if t is None:
        kind = vi.type.WhichOneof("value") or "no type"
        raise UnsupportedOpError(
            f"{what} has {kind.replace('_', ' ')}; graph inputs and outputs must be tensors, sequences or optionals "
            "with a known element type"
        )
    return t


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` without large or external initializer payloads (they become typed inputs)."""
    src = model.graph
    g = onnx.GraphProto(name=src.name)
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    declared = {vi.name for vi in src.input}
    for init in src.initializer:
        external = init.data_location == onnx.TensorProto.EXTERNAL
        if not external and init.ByteSize() <= _INLINE_LIMIT:
            g.initializer.append(init)
        elif init.name not in declared:
            g.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    m = onnx.ModelProto(ir_version=max(model.ir_version, 4), graph=g)
    m.opset_import.extend(model.opset_import)
    m.functions.extend(model.functions)
    return m


def _fully_typed(model: onnx.ModelProto) -> bool:
    """Every node output (but Constants', typed by their value) already has a type in the model."""
    g = model.graph
    typed = {v.name for v in (*g.value_info, *g.output, *g.input) if v.type.HasField("tensor_type")}
    typed |= {t.name for t in g.initializer}
    return all(o in typed for n in g.node if n.op_type != "Constant" for o in n.output if o)


def infer_value_types(model: onnx.ModelProto) -> dict[str, ValueType]:
    """Types of every value ONNX shape inference can type, by name (empty if inference fails outright).

    A model whose exporter already typed every value (the torch exporter does) is read as typed, skipping inference.
    """
    skeleton = model if _fully_typed(model) else _skeleton(model)
    inferred: onnx.ModelProto | None = skeleton if skeleton is model else None
    for strict in (True, False) if inferred is None else ():
        try:
            inferred = onnx.shape_inference.infer_shapes(
                skeleton, check_type=strict, strict_mode=strict, data_prop=True
            )
            break
        except Exception:  # onnx raises several unrelated exception types; any failure means "try weaker"
            continue
    if inferred is None:
        return {}
    types: dict[str, ValueType] = {}
    for vi in (*inferred.graph.value_info, *inferred.graph.output):
        try:
            t = value_type(vi.type, what=f"value {vi.name!r}")
        except UnsupportedOpError:
            t = None
        if t is not None:
            types[vi.name] = t
    return types
