"""Fold the constant subgraphs that produce weights into graph constants, as a table of rules by op type.

Only ops whose result is a pure function of attributes and constant inputs *without computation* are folded:
`Constant` (every `value*` form), `ConstantOfShape` of a constant shape (kept as a zero-copy broadcast view)
and `Identity` of a constant (its users read the constant itself, keeping the parameter name). Arbitrary ops
are never evaluated.

Rules look at a `FoldSite` (op type, attributes, inputs), which an IR `Node` satisfies, and so does a node the
importer has not created yet: the importer folds while it builds, so chains fold in one pass and no node is
created only to be erased. The importer keeps a node whose output is a graph output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from quantir.ir import Attr, DType, FrontendError, Tensor, Value
from quantir.ir.core import AttrValue

__all__ = ["FOLD_RULES", "FoldSite", "Folded", "fold"]


class FoldSite(Protocol):
    """What a fold rule may look at: an IR `Node`, or a node the importer is about to create."""

    @property
    def op_type(self) -> str: ...
    @property
    def domain(self) -> str: ...
    @property
    def attrs(self) -> dict[str, Attr]: ...
    @property
    def inputs(self) -> tuple[Value | None, ...]: ...
    def attr(self, name: str, default: AttrValue | None = None) -> AttrValue | None: ...
    def describe(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Folded:
    """What a folded node's (single) output becomes: a new constant, or an existing constant value."""

    tensor: Tensor | None = None
    existing: Value | None = None


FoldRule = Callable[[FoldSite], Folded | None]


def _const_input(node: FoldSite, index: int) -> Value | None:
    if index >= len(node.inputs):
        return None
    v = node.inputs[index]
    return v if v is not None and v.const is not None else None


def _array_tensor(array: np.ndarray, dtype: DType) -> Tensor:
    return Tensor(dtype, tuple(array.shape), array=np.asarray(array, dtype=dtype.storage))


_CONSTANT_FORMS: dict[str, Callable[[Any], Tensor]] = {
    "value_float": lambda v: _array_tensor(np.array(v, np.float32), DType.F32),
    "value_floats": lambda v: _array_tensor(np.array(v, np.float32).reshape(-1), DType.F32),
    "value_int": lambda v: _array_tensor(np.array(v, np.int64), DType.I64),
    "value_ints": lambda v: _array_tensor(np.array(v, np.int64).reshape(-1), DType.I64),
    "value_string": lambda v: _array_tensor(np.array(v, object), DType.STRING),
    "value_strings": lambda v: _array_tensor(np.array(list(v), object).reshape(-1), DType.STRING),
}
"""Constant's scalar and list attribute forms; `value` (a tensor) is used as it is."""


def _fold_constant(node: FoldSite) -> Folded | None:
    if len(node.attrs) != 1:
        raise FrontendError(
            f"{node.describe()} must have exactly one value attribute, found {sorted(node.attrs) or 'none'}"
        )
    ((name, attr),) = node.attrs.items()
    if name == "value":
        assert isinstance(attr.value, Tensor)
        return Folded(tensor=attr.value)
    form = _CONSTANT_FORMS.get(name)
    if form is None:
        raise FrontendError(
            f"{node.describe()}: unknown value attribute {name!r}; expected value or one of "
            f"{', '.join(_CONSTANT_FORMS)}"
        )
    return Folded(tensor=form(attr.value))


def _fold_constant_of_shape(node: FoldSite) -> Folded | None:
    shape_value = _const_input(node, 0)
    if shape_value is None:
        return None
    assert shape_value.const is not None
    dims = shape_value.const.numpy().reshape(-1)
    if dims.dtype.kind not in "iu" or np.any(dims < 0):
        raise FrontendError(
            f"{node.describe()}: shape input %{shape_value.name} must hold non-negative integers, "
            f"found {dims[:8].tolist()}"
        )
    fill = node.attr("value")
    if fill is None:
        fill = _array_tensor(np.zeros(1, np.float32), DType.F32)
    assert isinstance(fill, Tensor)
    if fill.size != 1:
        raise FrontendError(f"{node.describe()}: attribute value must hold one element, found shape {fill.shape}")
    shape = tuple(int(d) for d in dims)
    # A zero-stride view: a folded multi-megabyte weight costs no memory until it is written out.
    view = np.broadcast_to(fill.numpy().reshape(()), shape)
    return Folded(tensor=Tensor(fill.dtype, shape, array=view))


def _fold_identity(node: FoldSite) -> Folded | None:
    source = _const_input(node, 0)
    return None if source is None else Folded(existing=source)


FOLD_RULES: dict[str, FoldRule] = {
    "Constant": _fold_constant,
    "ConstantOfShape": _fold_constant_of_shape,
    "Identity": _fold_identity,
}
"""Default-domain op type -> rule giving what the node's output folds to (None: not foldable here)."""


def fold(site: FoldSite) -> Folded | None:
    """What `site`'s single output folds to, or None when no rule applies."""
    rule = FOLD_RULES.get(site.op_type) if site.domain in ("", "ai.onnx") else None
    return None if rule is None else rule(site)
