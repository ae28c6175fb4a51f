"""Import an ONNX model (a path or a `ModelProto`) into a verified IR `Graph`.

What is imported and how:

* Opsets 9 to 23 of the default domain are supported; older models (the ONNX test zoo has opset 6) import as
  written. Opset imports and `ir_version` go to `graph.opset_imports` / `graph.ir_version`. Ops of other
  domains (e.g. `com.microsoft`) pass through as nodes of their domain.
* Initializers become graph constants named by the initializer (the parameter name). External data is never
  read: each external initializer becomes a lazy, memory-mappable `Tensor(external=...)`. Locations that are
  absolute or leave the model's folder (`..`, symlinks) are refused. Initializers also listed as graph inputs
  (IR version < 4 models) are treated as constants and dropped from the inputs.
* ONNX shape inference types intermediate values (on a weight-free skeleton, see `shapes`).
* Node names are kept, and provenance (source module path and type) is read from `metadata_props`
  (see `provenance`).
* Constant subgraphs that produce weights are folded into constants (see `fold`).
* Model-local functions are inlined with `onnx.inliner` before import (nodes lose the function boundary).
* Not supported yet, refused with `UnsupportedOpError` naming the node, op and attribute: control-flow subgraphs
  (If/Loop/Scan bodies and any other graph attribute), sparse tensors (attributes and sparse initializers),
  type-proto and tensor-list attributes, and map-typed graph inputs/outputs.

Every failure is a `FrontendError` (or its subclass `UnsupportedOpError`) that says where and what was expected.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx.inliner

from quantir.frontends.onnx.attributes import convert_attribute, describe_node
from quantir.frontends.onnx.fold import Folded, fold
from quantir.frontends.onnx.provenance import source_of
from quantir.frontends.onnx.qdq_import import raise_qdq
from quantir.frontends.onnx.shapes import infer_value_types, required_type
from quantir.frontends.onnx.tensors import decode_tensor
from quantir.ir import (
    Attr,
    FrontendError,
    Graph,
    IRError,
    Node,
    SourceInfo,
    UnsupportedOpError,
    Value,
    VerifyError,
    verify,
)
from quantir.ir.core import AttrValue
from quantir.ir.types import ValueType

__all__ = ["import_onnx", "load_model_proto"]

DEFAULT_DOMAINS = ("", "ai.onnx")
"""The two spellings of the default ONNX domain."""


def load_model_proto(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Parse the `.onnx` file at `path` without loading its external data."""
    p = Path(path)
    if not p.is_file():
        raise FrontendError(f"ONNX model {os.fspath(p)!r} does not exist or is not a file")
    try:
        return onnx.load(os.fspath(p), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and onnx's own errors share no base class
        raise FrontendError(f"cannot parse ONNX model {os.fspath(p)!r}: {type(e).__name__}: {e}") from e


def import_onnx(
    model: str | os.PathLike[str] | onnx.ModelProto,
    *,
    base_dir: str | os.PathLike[str] | None = None,
    qdq: bool = True,
    qdq_left: list[str] | None = None,
) -> Graph:
    """Import `model` into a verified IR graph.

    `base_dir` is the folder external-data locations are relative to; it defaults to the model file's folder,
    and must be given for a `ModelProto` that has external data. With `qdq` (the default), QuantizeLinear/
    DequantizeLinear patterns become quant types on values (see `qdq_import`); `qdq=False` keeps them as ops.
    `qdq_left`, when given, receives one line per Q/DQ node left as an op, with why.
    """
    if isinstance(model, onnx.ModelProto):
        proto = model
        base = Path(base_dir) if base_dir is not None else None
    elif isinstance(model, (str, os.PathLike)):
        proto = load_model_proto(model)
        base = Path(base_dir) if base_dir is not None else Path(os.path.abspath(model)).parent
    else:
        raise FrontendError(f"import_onnx expects a path or an onnx.ModelProto, got {type(model).__name__}")
    if proto.functions:
        proto = _inline_functions(proto)
    _check_opsets(proto)
    try:
        graph = _Builder(proto, infer_value_types(proto), base).build()
        if qdq:
            report = raise_qdq(graph)
            if qdq_left is not None:
                qdq_left.extend(report.left)
        verify(graph)
    except (IRError, VerifyError) as e:
        raise FrontendError(f"ONNX graph {proto.graph.name!r} does not form a valid IR graph: {e}") from e
    return graph


def _inline_functions(proto: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.inliner.inline_local_functions(proto)
    except Exception as e:  # the C++ inliner raises plain RuntimeError/ValueError
        names = ", ".join(f"{f.domain}::{f.name}" for f in proto.functions)
        raise FrontendError(f"cannot inline the model's local functions ({names}): {e}") from e


def _check_opsets(proto: onnx.ModelProto) -> None:
    imported = {o.domain for o in proto.opset_import}
    for node in proto.graph.node:
        default = node.domain in DEFAULT_DOMAINS
        if node.domain not in imported and not (default and imported & set(DEFAULT_DOMAINS)):
            raise FrontendError(
                f"{describe_node(node)} uses domain {node.domain or 'ai.onnx (default)'!r}, which the model does not "
                f"import; its opset_import lists {sorted(imported)}"
            )


@dataclass(frozen=True, slots=True)
class _PendingNode:
    """An ONNX node with IR attributes and inputs, before it becomes an IR `Node` (a `FoldSite` for `fold`)."""

    proto: onnx.NodeProto
    attrs: dict[str, Attr]
    inputs: tuple[Value | None, ...]
    source: SourceInfo | None

    @property
    def op_type(self) -> str:
        return self.proto.op_type

    @property
    def domain(self) -> str:
        return self.proto.domain

    def attr(self, name: str, default: AttrValue | None = None) -> AttrValue | None:
        a = self.attrs.get(name)
        return default if a is None else a.value

    def describe(self) -> str:
        src = self.source
        origin = f" (from {src.module}: {src.module_type})" if src is not None and src.module_type else ""
        return describe_node(self.proto) + origin


class _Builder:
    """Builds the IR graph from a GraphProto, keeping the name -> value map that ONNX's SSA names define.

    Foldable nodes (see `fold`) become constants as they are met, unless their output is a graph output.
    """

    def __init__(self, proto: onnx.ModelProto, types: dict[str, ValueType], base: Path | None) -> None:
        self.src = proto.graph
        self.types = types
        self.base = base
        self.values: dict[str, Value] = {}
        self.graph = Graph(
            self.src.name or "main",
            opset_imports={o.domain: int(o.version) for o in proto.opset_import},
            ir_version=int(proto.ir_version),
        )
        self.output_names = {vi.name for vi in self.src.output}
        self.fold_inputs: dict[int, Value] = {}
        """Constants read by folded nodes: removed at the end if nothing else reads them."""

    def define(self, name: str, v: Value, what: str) -> None:
        if name in self.values:
            raise _defined_twice(name, what)
        self.values[name] = v

    def build(self) -> Graph:
        src, graph = self.src, self.graph
        if len(src.sparse_initializer):
            names = [s.values.name for s in src.sparse_initializer][:5]
            raise UnsupportedOpError(f"sparse initializers {names} are not supported yet; densify them before import")
        for init in src.initializer:
            what = f"initializer {init.name!r}"
            if not init.name or init.name in graph.constants:
                raise FrontendError(f"{what} has no name" if not init.name else f"{what} appears twice")
            self.define(init.name, graph.add_constant(init.name, decode_tensor(init, self.base, what=what)), what)
        for vi in src.input:
            if vi.name in graph.constants:
                continue  # an initializer listed as an input (IR version < 4): it is a constant
            v = Value(vi.name, required_type(vi, what=f"graph input {vi.name!r}"))
            self.define(vi.name, v, "a graph input")
            graph.inputs.append(v)
        for node in src.node:
            self.node(node)
        for vi in src.output:
            out = self.values.get(vi.name)
            if out is None:
                raise FrontendError(f"graph output {vi.name!r} is not produced by any node, input or initializer")
            if out.type is None:
                out.type = required_type(vi, what=f"graph output {vi.name!r}")
            graph.outputs.append(out)
        for c in self.fold_inputs.values():
            if not c.has_uses() and not graph.is_output(c) and graph.constants.get(c.name) is c:
                graph.remove_constant(c)
        return graph

    def node(self, node: onnx.NodeProto) -> None:
        attrs: dict[str, Attr] = {}
        for a in node.attribute:
            if a.name in attrs:
                raise FrontendError(f"{describe_node(node)} has attribute {a.name!r} twice")
            attrs[a.name] = convert_attribute(node, a, self.base)
        inputs: list[Value | None] = []
        for i, name in enumerate(node.input):
            v = self.values.get(name) if name else None
            if name and v is None:
                raise FrontendError(
                    f"{describe_node(node)}: input {i} {name!r} is not defined before the node; expected a graph "
                    "input, an initializer or the output of an earlier node (nodes must be in topological order)"
                )
            inputs.append(v)
        pending = _PendingNode(node, attrs, tuple(inputs), source_of(node))
        if len(node.output) == 1 and node.output[0] and node.output[0] not in self.output_names:
            folded = fold(pending)
            if folded is not None:
                self.fold_into(node, folded, inputs)
                return
        outputs = [Value(name, self.types.get(name)) if name else None for name in node.output]
        for i, v in enumerate(outputs):
            if v is not None:
                self.define(v.name, v, f"output {i} of {describe_node(node)}")
        self.graph.append(
            Node(node.op_type, inputs, outputs, attrs=attrs, domain=node.domain, name=node.name, source=pending.source)
        )

    def fold_into(self, node: onnx.NodeProto, folded: Folded, inputs: list[Value | None]) -> None:
        name = node.output[0]
        what = f"output 0 of {describe_node(node)} (folded to a constant)"
        value = folded.existing  # e.g. Identity(param): readers of `name` read `param` itself
        if value is None:
            assert folded.tensor is not None
            if name in self.values:
                raise _defined_twice(name, what)
            value = self.graph.add_constant(name, folded.tensor)
        self.define(name, value, what)
        for v in inputs:
            if v is not None and v.const is not None:
                self.fold_inputs[id(v)] = v


def _defined_twice(name: str, what: str) -> FrontendError:
    return FrontendError(f"value name {name!r} is defined twice (again as {what}); ONNX values are SSA")
