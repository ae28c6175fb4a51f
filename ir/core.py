"""The IR graph: `Value`, `Node`, `Graph`, node attributes and provenance.

Values and nodes compare by identity. Use lists are ordered and change only through IR methods
(`Node.set_input`, `Value.replace_all_uses_with`, `Graph.erase`), which keep them consistent.
Serialization is kept out of these classes (see `printer`, `parser` and the frontends/backends).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeAlias

from quantir.ir.dtypes import DType
from quantir.ir.errors import IRError, UseListError
from quantir.ir.tensor import Tensor
from quantir.ir.types import QuantSpec, QuantType, TensorType, ValueType

__all__ = [
    "Attr",
    "AttrKind",
    "AttrValue",
    "Graph",
    "Node",
    "SourceInfo",
    "Usage",
    "Value",
]


class AttrKind(enum.Enum):
    INT = "int"
    FLOAT = "float"
    STRING = "string"
    TENSOR = "tensor"
    INTS = "ints"
    FLOATS = "floats"
    STRINGS = "strings"


AttrValue: TypeAlias = int | float | str | Tensor | tuple[int, ...] | tuple[float, ...] | tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Attr:
    """A node attribute, ONNX-typed. Floats are float32 values held as Python floats."""

    kind: AttrKind
    value: AttrValue

    def __post_init__(self) -> None:
        k, v = self.kind, self.value
        ok = {
            AttrKind.INT: lambda: isinstance(v, int) and not isinstance(v, bool),
            AttrKind.FLOAT: lambda: isinstance(v, float),
            AttrKind.STRING: lambda: isinstance(v, str),
            AttrKind.TENSOR: lambda: isinstance(v, Tensor),
            AttrKind.INTS: lambda: isinstance(v, tuple) and all(type(x) is int for x in v),
            AttrKind.FLOATS: lambda: isinstance(v, tuple) and all(type(x) is float for x in v),
            AttrKind.STRINGS: lambda: isinstance(v, tuple) and all(isinstance(x, str) for x in v),
        }[k]()
        if not ok:
            raise TypeError(f"attribute value {v!r} is not of kind {k.value}")

    @classmethod
    def of(cls, value: AttrValue | list[int] | list[float] | list[str]) -> Attr:
        """Infer the kind from a Python value (a list of ints stays ints; mixed int/float become floats)."""
        if isinstance(value, bool):
            return cls(AttrKind.INT, int(value))
        if isinstance(value, int):
            return cls(AttrKind.INT, value)
        if isinstance(value, float):
            return cls(AttrKind.FLOAT, value)
        if isinstance(value, str):
            return cls(AttrKind.STRING, value)
        if isinstance(value, Tensor):
            return cls(AttrKind.TENSOR, value)
        items: tuple[int | float | str, ...] = tuple(value)
        if items and all(isinstance(x, str) for x in items):
            return cls(AttrKind.STRINGS, tuple(str(x) for x in items))
        numbers = [x for x in items if not isinstance(x, str)]
        if len(numbers) != len(items):
            raise TypeError(f"attribute list {list(items)!r} mixes strings and numbers")
        if any(isinstance(x, float) for x in numbers):
            return cls(AttrKind.FLOATS, tuple(float(x) for x in numbers))
        return cls(AttrKind.INTS, tuple(int(x) for x in numbers))


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """Provenance of a node: the source module path (`layer1.0.conv1`) and its type (`torch.nn.Conv2d`)."""

    module: str
    module_type: str = ""


class Usage(NamedTuple):
    """`node.inputs[idx]` is the value this usage belongs to."""

    node: Node
    idx: int


class Value:
    """An SSA value: a graph input, a constant (`const` set), or a node output."""

    __slots__ = ("_index", "_producer", "_uses", "const", "name", "quant", "type")

    def __init__(
        self,
        name: str,
        type: ValueType | None = None,
        *,
        const: Tensor | None = None,
        quant: QuantSpec | QuantType | None = None,
    ) -> None:
        self.name = name
        if const is not None and type is None:
            type = TensorType(const.dtype, const.shape)
        self.type = type
        self.const = const
        self.quant = quant
        self._producer: Node | None = None
        self._index: int | None = None
        self._uses: dict[Usage, None] = {}

    @property
    def producer(self) -> Node | None:
        return self._producer

    @property
    def index(self) -> int | None:
        """Which output of its producer this value is."""
        return self._index

    @property
    def is_constant(self) -> bool:
        return self.const is not None

    @property
    def dtype(self) -> DType | None:
        return self.type.dtype if isinstance(self.type, TensorType) else None

    def uses(self) -> tuple[Usage, ...]:
        """Ordered (node, input index) pairs that read this value."""
        return tuple(self._uses)

    def users(self) -> list[Node]:
        """Distinct consuming nodes, in use order."""
        seen: dict[Node, None] = {}
        for u in self._uses:
            seen[u.node] = None
        return list(seen)

    def has_uses(self) -> bool:
        return bool(self._uses)

    def replace_all_uses_with(self, other: Value, *, graph_outputs: Graph | None = None) -> None:
        """Point every user of this value at `other` (and, given `graph_outputs`, that graph's outputs too)."""
        if other is self:
            return
        for usage in list(self._uses):
            usage.node.set_input(usage.idx, other)
        if graph_outputs is not None:
            graph_outputs.outputs = [other if o is self else o for o in graph_outputs.outputs]

    def __repr__(self) -> str:
        return f"Value(%{self.name})"


class Node:
    """An operation. It owns its outputs; its inputs are a tuple changed only through `set_input`.

    An absent optional input or output is `None` (ONNX's empty name).
    """

    __slots__ = ("_inputs", "_outputs", "attrs", "domain", "graph", "name", "op_type", "source")

    def __init__(
        self,
        op_type: str,
        inputs: Sequence[Value | None],
        outputs: Sequence[Value | None],
        *,
        attrs: dict[str, Attr] | None = None,
        domain: str = "",
        name: str = "",
        source: SourceInfo | None = None,
    ) -> None:
        self.op_type = op_type
        self.domain = domain
        self.attrs: dict[str, Attr] = dict(attrs or {})
        self.name = name
        self.source = source
        self.graph: Graph | None = None
        self._inputs: tuple[Value | None, ...] = ()
        for i, v in enumerate(outputs):
            if v is None:
                continue
            if v._producer is not None:
                raise IRError(f"value %{v.name} is already produced by {v._producer.describe()}")
            if v.const is not None:
                raise IRError(f"constant %{v.name} cannot be the output of {op_type}")
            v._producer = self
            v._index = i
        self._outputs: tuple[Value | None, ...] = tuple(outputs)
        self._inputs = tuple(inputs)
        for i, v in enumerate(self._inputs):
            if v is not None:
                v._uses[Usage(self, i)] = None

    @property
    def inputs(self) -> tuple[Value | None, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[Value | None, ...]:
        return self._outputs

    def output(self, i: int = 0) -> Value:
        v = self._outputs[i]
        if v is None:
            raise IRError(f"output {i} of {self.describe()} is absent")
        return v

    def set_input(self, index: int, value: Value | None) -> None:
        """Replace input `index`, keeping both values' use lists consistent."""
        if not 0 <= index < len(self._inputs):
            raise IndexError(f"{self.describe()} has {len(self._inputs)} inputs; no input {index}")
        old = self._inputs[index]
        if old is value:
            return
        usage = Usage(self, index)
        if old is not None:
            if usage not in old._uses:
                raise UseListError(f"use list of %{old.name} lacks input {index} of {self.describe()}")
            del old._uses[usage]
        if value is not None:
            value._uses[usage] = None
        self._inputs = (*self._inputs[:index], value, *self._inputs[index + 1 :])

    def append_input(self, value: Value | None) -> None:
        self._inputs = (*self._inputs, value)
        if value is not None:
            value._uses[Usage(self, len(self._inputs) - 1)] = None

    def _detach_inputs(self) -> None:
        for i, v in enumerate(self._inputs):
            if v is not None:
                v._uses.pop(Usage(self, i), None)

    def attr(self, name: str, default: AttrValue | None = None) -> AttrValue | None:
        a = self.attrs.get(name)
        return default if a is None else a.value

    def describe(self) -> str:
        """A short reference for messages: op, name and source module."""
        label = f"{self.op_type} node"
        if self.name:
            label += f" {self.name!r}"
        elif self._outputs and self._outputs[0] is not None:
            label += f" producing %{self._outputs[0].name}"
        if self.source is not None:
            label += f" (from {self.source.module}"
            label += f": {self.source.module_type})" if self.source.module_type else ")"
        return label

    def __repr__(self) -> str:
        return f"Node({self.op_type}, name={self.name!r})"


class Graph:
    """A graph in topological order, with inputs, outputs, constants and opset imports."""

    __slots__ = ("_nodes", "constants", "inputs", "ir_version", "name", "opset_imports", "outputs")

    def __init__(
        self,
        name: str = "main",
        *,
        inputs: Iterable[Value] = (),
        outputs: Iterable[Value] = (),
        opset_imports: dict[str, int] | None = None,
        ir_version: int = 8,
    ) -> None:
        self.name = name
        self.inputs: list[Value] = list(inputs)
        self.outputs: list[Value] = list(outputs)
        self.constants: dict[str, Value] = {}
        self._nodes: list[Node] = []
        self.opset_imports: dict[str, int] = dict(opset_imports or {"": 17})
        self.ir_version = ir_version

    @property
    def nodes(self) -> tuple[Node, ...]:
        return tuple(self._nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(tuple(self._nodes))

    def __len__(self) -> int:
        return len(self._nodes)

    @property
    def opset(self) -> int:
        return self.opset_imports.get("", self.opset_imports.get("ai.onnx", 1))

    def add_constant(self, name: str, tensor: Tensor, *, quant: QuantSpec | QuantType | None = None) -> Value:
        if name in self.constants:
            raise IRError(f"graph {self.name!r} already has a constant named {name!r}")
        v = Value(name, const=tensor, quant=quant)
        self.constants[name] = v
        return v

    def append(self, node: Node) -> Node:
        self._claim(node)
        self._nodes.append(node)
        return node

    def insert_before(self, anchor: Node, node: Node) -> Node:
        self._claim(node)
        self._nodes.insert(self._position(anchor), node)
        return node

    def insert_after(self, anchor: Node, node: Node) -> Node:
        self._claim(node)
        self._nodes.insert(self._position(anchor) + 1, node)
        return node

    def erase(self, node: Node) -> None:
        """Remove `node`; refused while any of its outputs is used or is a graph output."""
        for v in node.outputs:
            if v is None:
                continue
            if v._uses:
                users = ", ".join(u.node.describe() for u in v._uses)
                raise UseListError(f"cannot erase {node.describe()}: its output %{v.name} is still used by {users}")
            if any(o is v for o in self.outputs):
                raise UseListError(f"cannot erase {node.describe()}: its output %{v.name} is a graph output")
        pos = self._position(node)
        node._detach_inputs()
        del self._nodes[pos]
        node.graph = None

    def remove_constant(self, value: Value) -> None:
        """Remove an unused constant."""
        if self.constants.get(value.name) is not value:
            raise IRError(f"%{value.name} is not a constant of graph {self.name!r}")
        if value._uses or any(o is value for o in self.outputs):
            users = ", ".join(u.node.describe() for u in value._uses) or "the graph outputs"
            raise UseListError(f"cannot remove constant %{value.name}: still used by {users}")
        del self.constants[value.name]

    def values(self) -> Iterator[Value]:
        """Every value: inputs, constants, then node outputs in order."""
        yield from self.inputs
        yield from self.constants.values()
        for n in self._nodes:
            for v in n.outputs:
                if v is not None:
                    yield v

    def fresh_name(self, base: str, *, nodes: bool = False) -> str:
        """`base`, or `base.1`, `base.2`... : the first not yet taken by a value (or, with `nodes`, a node name)."""
        taken = {n.name for n in self._nodes} if nodes else {v.name for v in self.values()}
        candidate, i = base, 1
        while candidate in taken:
            candidate, i = f"{base}.{i}", i + 1
        return candidate

    def is_output(self, value: Value) -> bool:
        return any(o is value for o in self.outputs)

    def _position(self, node: Node) -> int:
        if node.graph is not self:
            raise IRError(f"{node.describe()} is not in graph {self.name!r}")
        try:
            return self._nodes.index(node)  # nodes compare by identity; the scan runs in C
        except ValueError:
            raise IRError(f"{node.describe()} claims graph {self.name!r} but is not in its node list") from None

    def _claim(self, node: Node) -> None:
        if node.graph is not None:
            raise IRError(f"{node.describe()} already belongs to graph {node.graph.name!r}")
        node.graph = self
