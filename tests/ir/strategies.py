"""Hypothesis strategies for small random graphs that exercise every corner of the text form.

Graphs are structurally valid (values defined before use, unique names) but not necessarily verifiable:
quant types may sit on any value, so the printer and parser see every combination.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from quantir.ir import (
    Attr,
    AttrKind,
    DType,
    Granularity,
    Graph,
    Node,
    OptionalType,
    QuantSpec,
    QuantType,
    Scheme,
    SequenceType,
    SourceInfo,
    Tensor,
    TensorType,
    Value,
)
from quantir.ir.types import Dim, ValueType

ODD_NAMES = [
    "onnx::Conv_12", "/conv1/Conv_output_0", "a b", 'q"uote', "back\\slash", "ünïcødé", "tab\there", "new\nline",
    "", "_", "const", "nan", "inf", "true", "1x", "?", "*", "%", "@w", "x::y", "emoji🙂", "\x00nul", "\u2028",
]  # fmt: skip

names = st.one_of(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,6}", fullmatch=True),
    st.sampled_from(ODD_NAMES),
    st.text(max_size=5),
)
QUANT_DTYPES = [d for d in DType if d.is_integer or d.is_float]


def _storage_elements(dtype: DType) -> st.SearchStrategy[Any]:
    """Elements of `dtype`'s storage array, covering the full range (every bit pattern for minifloats)."""
    if dtype is DType.BF16:
        return st.integers(0, 0xFFFF)
    if dtype is DType.F4E2M1:
        return st.integers(0, 15)
    if dtype in (DType.F8E4M3FN, DType.F8E4M3FNUZ, DType.F8E5M2, DType.F8E5M2FNUZ):
        return st.integers(0, 255)
    if dtype.is_integer:
        lo, hi = dtype.int_range
        return st.integers(lo, hi)
    if dtype is DType.BOOL:
        return st.booleans()
    if dtype is DType.STRING:
        return st.text(max_size=4)
    if dtype is DType.F16:
        return st.floats(width=16)
    if dtype is DType.F32:
        return st.floats(width=32)
    if dtype is DType.F64:
        return st.floats()
    part = st.floats(width=32) if dtype is DType.C64 else st.floats()
    return st.builds(complex, part, part)


@st.composite
def tensors(draw: st.DrawFn, dtype: DType | None = None, max_size: int = 24) -> Tensor:
    dtype = dtype or draw(st.sampled_from(list(DType)))
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    size = int(np.prod(shape)) if shape else 1
    if size > max_size:
        shape, size = (max_size,), max_size
    values = draw(st.lists(_storage_elements(dtype), min_size=size, max_size=size))
    if dtype is DType.STRING:
        array = np.empty(size, dtype=object)
        array[:] = values
    else:
        array = np.array(values, dtype=dtype.storage)
    return Tensor(dtype, shape, array=array.reshape(shape))


dims: st.SearchStrategy[Dim] = st.one_of(st.integers(0, 64), st.none(), names)
tensor_types = st.builds(
    TensorType,
    st.sampled_from(list(DType)),
    st.one_of(st.none(), st.lists(dims, max_size=4).map(tuple)),
)
value_types: st.SearchStrategy[ValueType] = st.recursive(
    tensor_types,
    lambda inner: st.one_of(st.builds(SequenceType, inner), st.builds(OptionalType, inner)),
    max_leaves=3,
)


@st.composite
def granularities(draw: st.DrawFn, vtype: ValueType | None) -> tuple[Granularity, tuple[int, ...]]:
    """A granularity and the scale shape that fits it on a value of type `vtype`."""
    kind = draw(st.sampled_from(["per_tensor", "per_channel", "per_group"]))
    scalar = isinstance(vtype, TensorType) and vtype.shape == ()
    if kind == "per_tensor" or (kind == "per_channel" and scalar):  # a scalar has no channel axis
        return Granularity.per_tensor(), draw(st.sampled_from([(), (1,)]))
    if kind == "per_channel":
        if isinstance(vtype, TensorType) and vtype.shape:
            rank = len(vtype.shape)
            axis = draw(st.integers(-rank, rank - 1))
            dim = vtype.shape[axis]
            return Granularity.per_channel(axis), (dim if isinstance(dim, int) else draw(st.integers(1, 4)),)
        return Granularity.per_channel(draw(st.integers(-2, 3))), (draw(st.integers(0, 20)),)
    group = Granularity.per_group(draw(st.integers(-2, 3)), draw(st.integers(1, 128)))
    return group, tuple(draw(st.lists(st.integers(0, 5), min_size=1, max_size=2)))


@st.composite
def quants(draw: st.DrawFn, vtype: ValueType | None) -> QuantSpec | QuantType:
    dtype = draw(st.sampled_from(QUANT_DTYPES))
    scheme = draw(st.sampled_from(list(Scheme)))
    granularity, scale_shape = draw(granularities(vtype))
    observer = draw(st.one_of(st.sampled_from(["minmax", "kl", "percentile", "mse", "none"]), names))
    if dtype.is_integer:
        lo, hi = dtype.int_range
        if draw(st.booleans()):  # a range that int32 zero points can sit in
            lo, hi = max(lo, -(2**31)), min(hi, 2**31 - 1)
        qmin = draw(st.integers(lo, hi - 1))
        qmax = draw(st.integers(qmin + 1, hi))
    else:
        qmin, qmax = -448, 448
    if draw(st.booleans()) or qmin > 2**31 - 1 or qmax < -(2**31):
        if dtype.is_integer:
            return QuantSpec(dtype, scheme, granularity, observer, qmin, qmax)
        return QuantSpec(dtype, scheme, granularity, observer)
    size = int(np.prod(scale_shape)) if scale_shape else 1
    scale = np.array(draw(st.lists(st.floats(width=32), min_size=size, max_size=size)), np.float32)
    if dtype.is_float:
        zp_values = st.lists(st.floats(width=32), min_size=size, max_size=size)
    else:
        zp_int = st.integers(max(qmin, -(2**31)), min(qmax, 2**31 - 1))  # zero points are held as int32
        uniform = draw(st.booleans())
        zp_values = zp_int.map(lambda z: [z] * size) if uniform else st.lists(zp_int, min_size=size, max_size=size)
    zp = np.array(draw(zp_values), np.float32 if dtype.is_float else np.int32)
    return QuantType(
        dtype, scheme, granularity, scale.reshape(scale_shape), zp.reshape(scale_shape), qmin, qmax, observer
    )


_ATTR_VALUES: dict[AttrKind, st.SearchStrategy[Any]] = {
    AttrKind.INT: st.integers(-(2**63), 2**63 - 1),
    AttrKind.FLOAT: st.floats(),
    AttrKind.STRING: st.text(max_size=6),
    AttrKind.TENSOR: tensors(max_size=6),
    AttrKind.INTS: st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4).map(tuple),
    AttrKind.FLOATS: st.lists(st.floats(), max_size=4).map(tuple),
    AttrKind.STRINGS: st.lists(st.text(max_size=4), max_size=3).map(tuple),
}
attrs = st.sampled_from(list(AttrKind)).flatmap(lambda k: _ATTR_VALUES[k].map(lambda v: Attr(k, v)))


class _Names:
    """Hands out unique value names from drawn candidates."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def take(self, candidate: str) -> str:
        name, n = candidate, 0
        while name in self.used:
            n += 1
            name = f"{candidate}#{n}"
        self.used.add(name)
        return name


@st.composite
def values(draw: st.DrawFn, pool: _Names) -> Value:
    vtype = draw(st.one_of(st.none(), value_types))
    quant = draw(st.one_of(st.none(), quants(vtype)))
    return Value(pool.take(draw(names)), vtype, quant=quant)


@st.composite
def nodes(draw: st.DrawFn, defined: list[Value], pool: _Names) -> Node:
    inputs = draw(st.lists(st.one_of(st.none(), st.sampled_from(defined)) if defined else st.none(), max_size=3))
    outputs = draw(st.lists(st.one_of(st.none(), values(pool)), max_size=3))
    node_attrs = draw(st.dictionaries(names, attrs, max_size=3))
    source = draw(st.one_of(st.none(), st.builds(SourceInfo, names, names)))
    return Node(
        draw(st.one_of(st.sampled_from(["Conv", "Relu", "MatMul", "Foo"]), names)),
        inputs,
        outputs,
        attrs=node_attrs,
        domain=draw(st.sampled_from(["", "com.microsoft", "custom.domain", "weird domain"])),
        name=draw(st.one_of(st.just(""), names)),
        source=source,
    )


@st.composite
def graphs(draw: st.DrawFn) -> Graph:
    pool = _Names()
    opsets = draw(st.dictionaries(st.sampled_from(["", "com.microsoft", "ai.onnx.ml", "x y"]), st.integers(0, 30)))
    g = Graph(draw(names), opset_imports=opsets, ir_version=draw(st.integers(0, 11)))
    g.opset_imports = opsets
    g.inputs = draw(st.lists(values(pool), max_size=3))
    for _ in range(draw(st.integers(0, 3))):
        t = draw(tensors())
        quant = draw(st.one_of(st.none(), quants(TensorType(t.dtype, t.shape))))
        g.add_constant(pool.take(draw(names)), t, quant=quant)
    defined: list[Value] = [*g.inputs, *g.constants.values()]
    for _ in range(draw(st.integers(0, 5))):
        node = g.append(draw(nodes(defined, pool)))
        defined += [v for v in node.outputs if v is not None]
    if defined:
        g.outputs = draw(st.lists(st.sampled_from(defined), max_size=3))
    return g
