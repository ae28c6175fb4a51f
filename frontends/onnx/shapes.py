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


_CONSTANT_LISTS = {
    "value_int": (onnx.TensorProto.INT64, True),
    "value_ints": (onnx.TensorProto.INT64, False),
    "value_float": (onnx.TensorProto.FLOAT, True),
    "value_floats": (onnx.TensorProto.FLOAT, False),
}
"""Constant attributes other than `value`: (element type, scalar?)."""


def _known_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, tuple[int | None, ...] | None]]:
    """(element type, dims) of every value the model itself types: declared values, initializers, Constants."""
    g = model.graph
    known: dict[str, tuple[int, tuple[int | None, ...] | None]] = {}
    for vi in (*g.value_info, *g.output, *g.input):
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.elem_type:
            dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
            known[vi.name] = (tt.elem_type, dims if tt.HasField("shape") else None)
    for init in g.initializer:
        known[init.name] = (init.data_type, tuple(init.dims))
    for n in g.node:
        if n.op_type == "Constant" and len(n.attribute) == 1:
            a = n.attribute[0]
            if a.name == "value":
                known[n.output[0]] = (a.t.data_type, tuple(a.t.dims))
            elif a.name in _CONSTANT_LISTS:
                elem, scalar = _CONSTANT_LISTS[a.name]
                known[n.output[0]] = (elem, () if scalar else (len(a.ints) or len(a.floats),))
    return known


def _shape_op_types(model: onnx.ModelProto) -> list[onnx.ValueInfoProto] | None:
    """Types of the node outputs the exporter left untyped, when each is a Shape or Concat of typed values.

    Exporters commonly leave only the shape arithmetic of a Flatten/Reshape untyped; typing it here spares the
    process ONNX shape inference, whose first call initializes the operator-schema registry (~15 ms). None when
    some untyped output needs real inference.
    """
    known = _known_shapes(model)
    added: list[onnx.ValueInfoProto] = []
    for n in model.graph.node:
        if all(o in known for o in n.output if o):
            continue
        inputs = [known.get(i) for i in n.input]
        if not inputs or any(t is None for t in inputs) or len(n.output) != 1:
            return None
        shapes = [t[1] for t in inputs if t is not None]
        attrs = {a.name: a.i for a in n.attribute if a.type == onnx.AttributeProto.INT and not a.ref_attr_name}
        typed: tuple[int, tuple[int | None, ...] | None]
        if n.op_type == "Shape" and len(shapes) == 1 and shapes[0] is not None:
            rank = len(shapes[0])
            start, end = attrs.get("start", 0), attrs.get("end", rank)
            typed = (onnx.TensorProto.INT64, (len(range(rank)[slice(start, end)]),))
        elif n.op_type == "Concat" and inputs[0] is not None:
            typed = (inputs[0][0], _concat_dims(shapes, attrs.get("axis", 0)))
        else:
            return None
        known[n.output[0]] = typed
        dims = None if typed[1] is None else list(typed[1])
        added.append(onnx.helper.make_tensor_value_info(n.output[0], typed[0], dims))
    return added


def _concat_dims(shapes: list[tuple[int | None, ...] | None], axis: int) -> tuple[int | None, ...] | None:
    """Concat's output dims: the ranked inputs' dims, summed along `axis` (unknown if any input's is)."""
    ranked = [s for s in shapes if s is not None]
    if not ranked:
        return None
    rank = len(ranked[0])
    axis += rank if axis < 0 else 0
    parts = [s[axis] if s is not None else None for s in shapes]
    joined = None if None in parts else sum(p for p in parts if p is not None)
    return tuple(joined if i == axis else ranked[0][i] for i in range(rank))


def infer_value_types(model: onnx.ModelProto) -> dict[str, ValueType]:
    """Types of every value ONNX shape inference can type, by name (empty if inference fails outright).

    A model whose exporter already typed every value (the torch exporter does, but for shape arithmetic that
    `_shape_op_types` types) is read as typed, skipping inference.
    """
    local = _shape_op_types(model)
    if local is not None:
        return _types_of((*model.graph.value_info, *local, *model.graph.output))
    skeleton = _skeleton(model)
    inferred: onnx.ModelProto | None = None
    for strict in (True, False):
        try:
            inferred = onnx.shape_inference.infer_shapes(
                skeleton, check_type=strict, strict_mode=strict, data_prop=True
            )
            break
        except Exception:  # onnx raises several unrelated exception types; any failure means "try weaker"
            continue
    if inferred is None:
        return {}
    return _types_of((*inferred.graph.value_info, *inferred.graph.output))


def _types_of(infos: tuple[onnx.ValueInfoProto, ...]) -> dict[str, ValueType]:
    types: dict[str, ValueType] = {}
    for vi in infos:
        try:
            t = value_type(vi.type, what=f"value {vi.name!r}")
        except UnsupportedOpError:
            t = None
        if t is not None:
            types[vi.name] = t
    return types
