"""The printer of the textual IR: the canonical spelling of graphs, types, attributes and constants.

`print_graph` writes the form `parser.parse` reads back exactly; `format_context` shows the lines around a
node for error messages. Large constants and scale arrays are printed as `@name` sidecar references.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from quantir.ir.core import Attr, AttrKind, Graph, Node, Value
from quantir.ir.dtypes import DType
from quantir.ir.errors import QuantirError, SerializationError
from quantir.ir.tensor import Tensor
from quantir.ir.types import (
    Dim,
    Granularity,
    GranularityKind,
    OptionalType,
    QuantSpec,
    QuantType,
    SequenceType,
    TensorType,
    ValueType,
)

__all__ = [
    "FORMAT_VERSION",
    "RESERVED_WORDS",
    "MiniFloat",
    "format_context",
    "format_name",
    "format_type",
    "minifloat",
    "print_graph",
    "print_graph_with_tensors",
    "quote",
]

FORMAT_VERSION = 1
"""The number after `qir` in the header."""

DEFAULT_INLINE_LIMIT = 16

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")

RESERVED_WORDS = frozenset(
    {"qir", "ir_version", "opset", "graph", "const", "return", "seq", "opt", "true", "false", "inf", "nan", "_"}
)
"""Words of the grammar; a bare name equal to one of them is printed quoted."""

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def quote(text: str) -> str:
    """`text` as a double-quoted string literal; non-printable characters become \\x, \\u or \\U escapes."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    out = ['"']
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def format_name(name: str) -> str:
    """A name (graph, op, domain, attribute, symbolic dim, observer): bare if it is an identifier, else quoted."""
    return name if _IDENT.match(name) and name not in RESERVED_WORDS else quote(name)


def format_value_name(name: str) -> str:
    return "%" + (name if _IDENT.match(name) else quote(name))


def format_ref(name: str) -> str:
    return "@" + (name if _IDENT.match(name) else quote(name))


def _format_dim(dim: Dim) -> str:
    if dim is None:
        return "?"
    if isinstance(dim, int):
        return str(dim)
    return format_name(dim)


def format_type(t: ValueType) -> str:
    """`f32[N,3]`, `f32[*]` (unknown rank), `seq<...>`, `opt<...>`."""
    if isinstance(t, SequenceType):
        return f"seq<{format_type(t.elem)}>"
    if isinstance(t, OptionalType):
        return f"opt<{format_type(t.elem)}>"
    if t.shape is None:
        return f"{t.dtype.value}[*]"
    return f"{t.dtype.value}[{','.join(_format_dim(d) for d in t.shape)}]"


# ---- element spelling --------------------------------------------------------------------------------------


def format_f32(x: float | np.floating) -> str:
    """The shortest decimal that reads back as the same float32."""
    return str(np.float32(x))


def format_f64(x: float | np.floating) -> str:
    return repr(float(x))


@dataclass(frozen=True, slots=True)
class MiniFloat:
    """A float format numpy lacks (bf16, fp8, fp4), held as integer codes: decoding table and exact encoder."""

    dtype: DType
    values: np.ndarray
    """float32 value of every code."""
    encoder: dict[int, int]
    """float32 bit pattern -> code, for every non-NaN value."""
    nan_code: int | None

    def encode(self, value: float) -> int | None:
        """The code of `value` if the format represents it exactly, else None."""
        f = np.float32(value)
        if np.isnan(f):
            return self.nan_code
        return self.encoder.get(int(f.view(np.uint32)))

    def hex(self, code: int) -> str:
        return f"0x{code:0{max(1, self.dtype.bits // 4)}x}"


def _fp_table(exp_bits: int, man_bits: int, bias: int, nan_rule: str) -> np.ndarray:
    """float32 values of all codes of a small float: nan_rule is "ieee", "fn" (all ones is NaN), "fnuz"
    (0x80 is the only NaN, no -0) or "none" (every code is finite)."""
    total = 1 + exp_bits + man_bits
    codes = np.arange(1 << total, dtype=np.int64)
    sign = np.where(codes >> (total - 1), -1.0, 1.0)
    exp = (codes >> man_bits) & ((1 << exp_bits) - 1)
    man = codes & ((1 << man_bits) - 1)
    frac = man / float(1 << man_bits)
    normal = (1.0 + frac) * np.exp2(exp - bias)
    subnormal = frac * np.exp2(1 - bias)
    values = sign * np.where(exp == 0, subnormal, normal)
    top = (1 << exp_bits) - 1
    if nan_rule == "ieee":
        values = np.where((exp == top) & (man == 0), sign * np.inf, values)
        values = np.where((exp == top) & (man != 0), np.nan, values)
    elif nan_rule == "fn":
        values = np.where((exp == top) & (man == (1 << man_bits) - 1), np.nan, values)
    elif nan_rule == "fnuz":
        values = np.where(codes == 1 << (total - 1), np.nan, values)
    return values.astype(np.float32)


def _bf16_table() -> np.ndarray:
    return (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32)


_MINIFLOAT_SPECS: dict[DType, tuple[Callable[[], np.ndarray], int | None]] = {
    DType.BF16: (_bf16_table, 0x7FC0),
    DType.F8E4M3FN: (lambda: _fp_table(4, 3, 7, "fn"), 0x7F),
    DType.F8E4M3FNUZ: (lambda: _fp_table(4, 3, 8, "fnuz"), 0x80),
    DType.F8E5M2: (lambda: _fp_table(5, 2, 15, "ieee"), 0x7E),
    DType.F8E5M2FNUZ: (lambda: _fp_table(5, 2, 16, "fnuz"), 0x80),
    DType.F4E2M1: (lambda: _fp_table(2, 1, 1, "none"), None),
}
_MINIFLOATS: dict[DType, MiniFloat] = {}


def minifloat(dtype: DType) -> MiniFloat | None:
    """The codec of `dtype` if it is a float format stored as integer codes, else None."""
    spec = _MINIFLOAT_SPECS.get(dtype)
    if spec is None:
        return None
    if dtype not in _MINIFLOATS:
        values = spec[0]()
        bits = values.view(np.uint32)
        encoder: dict[int, int] = {}
        for code in range(values.size - 1, -1, -1):  # backwards so the lowest code wins
            if not np.isnan(values[code]):
                encoder[int(bits[code])] = code
        _MINIFLOATS[dtype] = MiniFloat(dtype, values, encoder, spec[1])
    return _MINIFLOATS[dtype]


def _minifloat_elements(codec: MiniFloat, codes: np.ndarray) -> list[str]:
    out = []
    for code in codes.reshape(-1).tolist():
        if code < codec.values.size:
            text = format_f32(codec.values[code])
            if codec.encode(float(text)) == code:
                out.append(text)
                continue
        out.append(codec.hex(code))  # NaN payloads, -NaN, invalid codes: only the bits say exactly
    return out


def _string_element(x: object) -> str:
    if not isinstance(x, str):
        raise SerializationError(f"string tensor element {x!r} is a {type(x).__name__}, not a str")
    return quote(x)


def _elements(dtype: DType, array: np.ndarray) -> list[str]:
    """Each element of `array` (storage layout of `dtype`) spelled exactly, in C order."""
    flat = array.reshape(-1)
    codec = minifloat(dtype)
    if codec is not None:
        return _minifloat_elements(codec, flat)
    if dtype.is_integer:
        return [str(x) for x in flat.tolist()]
    if dtype is DType.BOOL:
        return ["true" if x else "false" for x in flat.tolist()]
    if dtype is DType.STRING:
        return [_string_element(x) for x in flat.tolist()]
    if dtype in (DType.F32, DType.F16):
        return [str(x) for x in flat]  # numpy scalars print their shortest round-tripping repr
    if dtype is DType.F64:
        return [format_f64(x) for x in flat.tolist()]
    part = format_f32 if dtype is DType.C64 else format_f64
    return [f"({part(x.real)}, {part(x.imag)})" for x in flat]


def _nest(items: list[str], shape: tuple[int, ...]) -> str:
    """Flat element spellings as (nested) list syntax of `shape`; a scalar is the bare element."""
    if not shape:
        return items[0]
    if len(shape) == 1:
        return "[" + ", ".join(items) + "]"
    step = len(items) // shape[0] if shape[0] else 0
    return "[" + ", ".join(_nest(items[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])) + "]"


def format_array(dtype: DType, array: np.ndarray) -> str:
    """A literal for `array` (held in `dtype`'s storage): nested lists, or a bare scalar for shape ().

    An empty array is `[]` whatever its shape; the declared type says which.
    """
    if array.size == 0:
        return "[]"
    return _nest(_elements(dtype, array), tuple(array.shape))


# ---- the printer -------------------------------------------------------------------------------------------


def _granularity(g: Granularity) -> str:
    if g.kind is GranularityKind.PER_CHANNEL:
        return f"per_channel({g.axis})"
    if g.kind is GranularityKind.PER_GROUP:
        return f"per_group({g.axis}, {g.group_size})"
    return "per_tensor"


class _Printer:
    """Prints one graph; collects the tensors that go to the sidecar under unique names."""

    def __init__(self, graph: Graph, inline_limit: int) -> None:
        self.graph = graph
        self.inline_limit = inline_limit
        self.tensors: dict[str, Tensor] = {}
        self._taken = {v.name for v in graph.constants.values()}

    def graph_lines(self) -> Iterator[str]:
        g = self.graph
        opsets = ", ".join(f"{quote(k)}: {v}" for k, v in sorted(g.opset_imports.items()))
        yield f"qir {FORMAT_VERSION} ir_version {g.ir_version} opset {{{opsets}}}"
        inputs = ", ".join(self.value_decl(v) for v in g.inputs)
        yield f"graph {format_name(g.name)}({inputs}) {{"
        for v in g.constants.values():
            yield "  " + self.const_line(v)
        for i, node in enumerate(g.nodes):
            yield "  " + self.node_line(node, i)
        outputs = ", ".join(format_value_name(v.name) for v in g.outputs)
        yield f"  return {outputs}" if outputs else "  return"
        yield "}"

    def sidecar_key(self, base: str) -> str:
        key, n = base, 0
        while key in self._taken:
            n += 1
            key = f"{base}~{n}"
        self._taken.add(key)
        return key

    def goes_to_sidecar(self, size: int, dtype: DType) -> bool:
        # Strings have no byte layout in safetensors; they are always inline.
        return size > self.inline_limit and dtype is not DType.STRING

    def value_decl(self, v: Value) -> str:
        text = format_value_name(v.name)
        if v.type is not None:
            text += ": " + format_type(v.type)
        if v.quant is not None:
            text += " " + self.quant(v.quant, v)
        return text

    def const_line(self, v: Value) -> str:
        t = v.const
        assert t is not None
        payload_type = TensorType(t.dtype, t.shape)
        if v.type != payload_type:
            raise SerializationError(
                f"constant %{v.name} has type {v.type} but its payload is {format_type(payload_type)}; "
                "run verify() to find where it went wrong"
            )
        if self.goes_to_sidecar(t.size, t.dtype):
            self.tensors[v.name] = t
            self._taken.add(v.name)
            payload = format_ref(v.name)
        else:
            payload = format_array(t.dtype, t.numpy())
        return f"const {self.value_decl(v)} = {payload}"

    def node_line(self, node: Node, index: int) -> str:
        outs = ", ".join("_" if v is None else self.value_decl(v) for v in node.outputs) or "()"
        op = format_name(node.op_type)
        if node.domain:
            op = f"{format_name(node.domain)}::{op}"
        args = ", ".join("_" if v is None else format_value_name(v.name) for v in node.inputs)
        text = f"{outs} = {op}({args})"
        if node.attrs:
            label = node.name or f"{node.op_type}_{index}"
            attrs = ", ".join(self.attr(name, node.attrs[name], label) for name in sorted(node.attrs))
            text += f" {{{attrs}}}"
        if node.name:
            text += f" #name({quote(node.name)})"
        if node.source is not None:
            src = quote(node.source.module)
            if node.source.module_type:
                src += ", " + quote(node.source.module_type)
            text += f" #src({src})"
        return text

    def attr(self, name: str, attr: Attr, node_label: str) -> str:
        return f"{format_name(name)}={self.attr_value(attr, f'{node_label}.{name}')}"

    def attr_value(self, attr: Attr, key: str) -> str:
        v = attr.value
        kind = attr.kind
        if kind is AttrKind.INT:
            return str(v)
        if kind is AttrKind.FLOAT:
            assert isinstance(v, float)
            return format_f64(v)
        if kind is AttrKind.STRING:
            assert isinstance(v, str)
            return quote(v)
        if kind is AttrKind.TENSOR:
            assert isinstance(v, Tensor)
            return self.tensor_attr(v, key)
        assert isinstance(v, tuple)
        if not v:
            return f"{kind.value}[]"
        items: list[str]
        if kind is AttrKind.INTS:
            items = [str(x) for x in v]
        elif kind is AttrKind.FLOATS:
            items = [format_f64(float(x)) for x in v]
        else:
            items = [quote(str(x)) for x in v]
        return "[" + ", ".join(items) + "]"

    def tensor_attr(self, t: Tensor, key: str) -> str:
        head = format_type(TensorType(t.dtype, t.shape))
        if self.goes_to_sidecar(t.size, t.dtype):
            name = self.sidecar_key(key)
            self.tensors[name] = t
            return f"{head} {format_ref(name)}"
        return f"{head} {format_array(t.dtype, t.numpy())}"

    def quant(self, q: QuantSpec | QuantType, owner: Value) -> str:
        parts = [q.dtype.value, q.scheme.value, _granularity(q.granularity)]
        if isinstance(q, QuantType):
            parts.append("scale=" + self.quant_array(DType.F32, q.scale, f"{owner.name}.scale"))
            zp_dtype = DType.F32 if q.dtype.is_float else DType.I32
            zp = q.zero_point
            if zp.size and bool(np.all(zp == zp.reshape(-1)[0])):
                parts.append("zp=" + format_array(zp_dtype, zp.reshape(-1)[:1].reshape(())))
            else:
                parts.append("zp=" + self.quant_array(zp_dtype, zp, f"{owner.name}.zero_point"))
        if q.qmin is not None:
            parts.append(f"qmin={q.qmin}")
        if q.qmax is not None:
            parts.append(f"qmax={q.qmax}")
        parts.append(f"observer={format_name(q.observer)}")
        opener = "!q<" if isinstance(q, QuantType) else "!qspec<"
        return opener + " ".join(parts) + ">"

    def quant_array(self, dtype: DType, array: np.ndarray, key: str) -> str:
        if self.goes_to_sidecar(array.size, dtype):
            name = self.sidecar_key(key)
            self.tensors[name] = Tensor.from_numpy(np.ascontiguousarray(array), dtype)
            return format_ref(name)
        if array.size == 0 and array.ndim > 1:  # lists cannot spell its shape ([] loses the zeros after the first)
            return f"{format_type(TensorType(dtype, tuple(array.shape)))} []"
        return format_array(dtype, array)


def print_graph_with_tensors(
    graph: Graph, *, inline_limit: int = DEFAULT_INLINE_LIMIT
) -> tuple[str, dict[str, Tensor]]:
    """The text of `graph` and the tensors its `@name` references name (what belongs in the sidecar).

    Constants and tensor attributes with more than `inline_limit` elements, and scale or zero-point arrays
    that large, are referenced; a constant's sidecar name is its own name.
    """
    printer = _Printer(graph, inline_limit)
    text = "\n".join(printer.graph_lines()) + "\n"
    return text, printer.tensors


def print_graph(graph: Graph, *, inline_limit: int = DEFAULT_INLINE_LIMIT) -> str:
    """The canonical text of `graph`; `parser.parse` reads it back into a structurally equal graph."""
    return print_graph_with_tensors(graph, inline_limit=inline_limit)[0]


def format_context(graph: Graph, node: Node, radius: int = 3) -> str:
    """The printed lines of the nodes around `node` (with their line numbers in `print_graph`'s output),
    `>>` marking the node's own line; for error messages."""
    nodes = graph.nodes
    index = next((i for i, n in enumerate(nodes) if n is node), None)
    printer = _Printer(graph, DEFAULT_INLINE_LIMIT)
    if index is None:
        return f"  >> {_safe_line(printer, node, 0)}    (not in graph {graph.name!r})"
    first_line = 3 + len(graph.constants)  # header, graph signature, then one line per constant
    lo, hi = max(0, index - radius), min(len(nodes), index + radius + 1)
    width = len(str(first_line + hi - 1))
    lines = []
    for i in range(lo, hi):
        marker = ">>" if i == index else "  "
        lines.append(f"  {marker} {first_line + i:>{width}} | {_safe_line(printer, nodes[i], i)}")
    return "\n".join(lines)


def _safe_line(printer: _Printer, node: Node, index: int) -> str:
    # Context is printed while reporting another error: a node that cannot be printed must not hide it.
    try:
        return printer.node_line(node, index)
    except (QuantirError, OSError, ValueError, TypeError, AttributeError) as e:
        return f"<cannot print {node.describe()}: {e}>"
