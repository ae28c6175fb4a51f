"""The parser of the textual IR: `parse(text) -> Graph`, the inverse of `printer.print_graph`.

Syntax comes from `grammar.lark` (LALR); meaning is checked here, and every error is a `ParseError` that
shows `file:line:column`, the source line, a caret, and what was expected in words.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from typing import NoReturn, TypeAlias

import lark
import numpy as np

from quantir.ir.core import Attr, AttrKind, Graph, Node, SourceInfo, Value
from quantir.ir.dtypes import DType
from quantir.ir.errors import ParseError
from quantir.ir.printer import FORMAT_VERSION, minifloat
from quantir.ir.tensor import Tensor
from quantir.ir.types import (
    Dim,
    Granularity,
    OptionalType,
    QuantSpec,
    QuantType,
    Scheme,
    SequenceType,
    TensorType,
    ValueType,
)

__all__ = ["parse"]

Where: TypeAlias = lark.Token | lark.Tree | tuple[int, int] | None
Leaf: TypeAlias = lark.Token | lark.Tree

_TERMINAL_WORDS = {
    "VALUE": "a value name like %x",
    "REF": "a sidecar reference like @w",
    "IDENT": "a name",
    "STRING": "a quoted string",
    "INT": "an integer",
    "FLOAT": "a float",
    "HEX": "a 0x.. bit pattern",
    "$END": "the end of the text",
}
_QUANT_KEYS = ("scale", "zp", "qmin", "qmax", "observer")
_GRANULARITY_ARITY = {"per_tensor": 0, "per_channel": 1, "per_group": 2}


@cache
def _lark() -> lark.Lark:
    grammar = resources.files("quantir.ir").joinpath("grammar.lark").read_text(encoding="utf-8")
    return lark.Lark(grammar, parser="lalr", maybe_placeholders=True)


def parse(text: str, *, tensors: Mapping[str, Tensor] | None = None, filename: str = "<string>") -> Graph:
    """Build the graph `text` describes; `@name` references are resolved from `tensors` (the sidecar)."""
    source = _Source(text, filename)
    try:
        tree = _lark().parse(text)
    except lark.exceptions.UnexpectedInput as e:
        raise source.syntax_error(e) from None
    return _Builder(source, tensors or {}).build(tree)


# ---- error reporting ---------------------------------------------------------------------------------------


class _Source:
    """The text being parsed, for messages with a caret under the offending column."""

    def __init__(self, text: str, filename: str) -> None:
        self.lines = text.split("\n")
        self.filename = filename

    def error(self, message: str, where: Where) -> ParseError:
        line, column = _position(where)
        if line is None or column is None:
            return ParseError(f"{self.filename}: {message}")
        src = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        pad = "".join(c if c == "\t" else " " for c in src[: column - 1])
        text = f"{self.filename}:{line}:{column}: {message}\n    {src}\n    {pad}^"
        return ParseError(text, line=line, column=column)

    def syntax_error(self, e: lark.exceptions.UnexpectedInput) -> ParseError:
        where: Where
        if isinstance(e, lark.exceptions.UnexpectedToken) and e.token.type != "$END":
            found, where = repr(str(e.token)), (e.token.line, e.token.column)
        elif isinstance(e, lark.exceptions.UnexpectedCharacters):
            found, where = repr(e.char), (e.line, e.column)
        else:
            found, where = "end of text", self._end()
        words = _expected_words(_expected_terminals(e))
        return self.error(f"unexpected {found}" + (f"; expected {words}" if words else ""), where)

    def _end(self) -> tuple[int, int]:
        """The position just after the last non-blank line."""
        line = len(self.lines)
        while line > 1 and not self.lines[line - 1].strip():
            line -= 1
        return line, len(self.lines[line - 1]) + 1


def _expected_terminals(e: lark.exceptions.UnexpectedInput) -> set[str]:
    # The interactive parser knows which tokens the state really accepts; the raw `expected` set of an LALR
    # error is the union over merged states and lists tokens that would fail one reduction later.
    interactive = getattr(e, "interactive_parser", None)
    if interactive is not None:
        try:
            return set(interactive.accepts())
        except lark.exceptions.LarkError:
            pass
    return set(getattr(e, "expected", None) or getattr(e, "allowed", None) or ())


def _position(where: Where) -> tuple[int | None, int | None]:
    if isinstance(where, lark.Token):
        return where.line, where.column
    if isinstance(where, lark.Tree):  # a rule is where its first token is (positions are not propagated: speed)
        first = next(where.scan_values(lambda v: isinstance(v, lark.Token)), None)
        return (first.line, first.column) if first is not None else (None, None)
    if where is None:
        return None, None
    return where


def _expected_words(names: Iterable[str]) -> str:
    words = set()
    for name in names:
        if name in _TERMINAL_WORDS:
            words.add(_TERMINAL_WORDS[name])
            continue
        try:
            pattern = _lark().get_terminal(name).pattern
        except KeyError:
            words.add(name.lower())
            continue
        words.add(f"'{pattern.value}'" if isinstance(pattern, lark.lexer.PatternStr) else name.lower())
    ordered = sorted(words, key=lambda w: (not w.startswith("'"), w))
    if len(ordered) <= 1:
        return "".join(ordered)
    return ", ".join(ordered[:-1]) + " or " + ordered[-1]


def _elements_of(array: lark.Tree) -> list[Leaf]:
    """The elements of an `array` rule, without its opening bracket."""
    return [c for c in array.children[1:] if c is not None]


# ---- tokens to Python values -------------------------------------------------------------------------------

_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}


class _Builder:
    """Walks the parse tree in text order, defining values before their uses."""

    def __init__(self, source: _Source, tensors: Mapping[str, Tensor]) -> None:
        self.src = source
        self.tensors = tensors
        self.values: dict[str, Value] = {}
        self.defined_at: dict[str, lark.Token] = {}
        self.all_defs: dict[str, lark.Token] = {}

    def fail(self, message: str, where: Where) -> NoReturn:
        raise self.src.error(message, where)

    # -- strings and names --

    def unescape(self, tok: lark.Token, body_start: int = 0) -> str:
        """The text of a quoted literal `tok` (whose quote starts at `body_start`)."""
        raw = str(tok)[body_start + 1 : -1]

        def replace(m: re.Match[str]) -> str:
            esc = m.group(1)
            if esc in _SIMPLE_ESCAPES:
                return _SIMPLE_ESCAPES[esc]
            if esc[0] in "xuU" and len(esc) > 1:
                code = int(esc[1:], 16)
                if code > 0x10FFFF:
                    self.fail(f"escape \\{esc} is beyond the last unicode character", tok)
                return chr(code)
            column = tok.column + body_start + 1 + m.start() if tok.column is not None else None
            self.fail(
                f'unknown escape \\{esc} in a string; use \\\\, \\", \\n, \\t, \\r, \\xHH, \\uHHHH or \\UHHHHHHHH',
                (tok.line or 0, column or 0),
            )

        return _ESCAPE.sub(replace, raw)

    def name(self, tok: lark.Token) -> str:
        """An IDENT or STRING token as a name."""
        return self.unescape(tok) if tok.type == "STRING" else str(tok)

    def sigil_name(self, tok: lark.Token) -> str:
        """The name in a `%name`, `%"name"`, `@name` or `@"name"` token."""
        text = str(tok)
        return self.unescape(tok, 1) if text[1:2] == '"' else text[1:]

    def int_of(self, tok: Leaf, what: str) -> int:
        if not isinstance(tok, lark.Token) or tok.type != "INT":
            self.fail(f"{what} must be an integer", tok)
        return int(tok)

    def dtype(self, tok: lark.Token) -> DType:
        try:
            return DType.parse(str(tok))
        except ValueError as e:
            self.fail(str(e), tok)

    # -- structure --

    def build(self, tree: lark.Tree) -> Graph:
        header, body = tree.children
        assert isinstance(header, lark.Tree) and isinstance(body, lark.Tree)
        ir_version, opsets = self.header(header)
        name_tok, *items = body.children
        assert isinstance(name_tok, lark.Token)
        graph = Graph(self.name(name_tok), opset_imports=opsets, ir_version=ir_version)
        graph.opset_imports = opsets  # the constructor substitutes {"": 17} for an empty dict
        self.collect_definitions(items)
        for item in items:
            if item is None:
                continue
            assert isinstance(item, lark.Tree)
            if item.data == "value_decl":
                graph.inputs.append(self.define(self.value(item)[0], item))
            elif item.data == "const_stmt":
                self.constant(graph, item)
            elif item.data == "return_stmt":
                graph.outputs = [self.use(t, "as a graph output") for t in self.present(item.children)]
            else:
                graph.append(self.node(item))
        return graph

    @staticmethod
    def present(children: Iterable[object]) -> list[lark.Token]:
        out = []
        for c in children:
            if c is not None:
                assert isinstance(c, lark.Token)
                out.append(c)
        return out

    def header(self, tree: lark.Tree) -> tuple[int, dict[str, int]]:
        version, ir_version, *entries = tree.children
        assert isinstance(version, lark.Token) and isinstance(ir_version, lark.Token)
        if int(version) != FORMAT_VERSION:
            self.fail(f"unsupported qir format version {version}; this quantir reads version {FORMAT_VERSION}", version)
        opsets: dict[str, int] = {}
        for entry in entries:
            if entry is None:
                continue
            assert isinstance(entry, lark.Tree)
            key_tok, version_tok = entry.children
            assert isinstance(key_tok, lark.Token) and isinstance(version_tok, lark.Token)
            domain = self.unescape(key_tok)
            if domain in opsets:
                self.fail(f"opset domain {domain!r} is listed twice", key_tok)
            opsets[domain] = self.int_of(version_tok, "an opset version")
        return int(ir_version), opsets

    def collect_definitions(self, items: list[object]) -> None:
        """Where each name is defined, so that a use before its definition can say where it is."""
        for item in items:
            if not isinstance(item, lark.Tree):
                continue
            if item.data == "value_decl":
                decls = [item]
            elif item.data == "const_stmt":
                decls = [item.children[0]]
            elif item.data == "node_stmt":
                outs = item.children[0]
                assert isinstance(outs, lark.Tree)
                decls = [c for c in outs.children if isinstance(c, lark.Tree)]
            else:
                continue
            for decl in decls:
                assert isinstance(decl, lark.Tree)
                tok = decl.children[0]
                assert isinstance(tok, lark.Token)
                self.all_defs.setdefault(self.sigil_name(tok), tok)

    def define(self, v: Value, decl: lark.Tree) -> Value:
        tok = decl.children[0]
        assert isinstance(tok, lark.Token)
        first = self.defined_at.get(v.name)
        if first is not None:
            self.fail(f"value %{v.name} is defined twice (first on line {first.line}); names must be unique", tok)
        self.values[v.name] = v
        self.defined_at[v.name] = tok
        return v

    def use(self, tok: lark.Token, role: str) -> Value:
        name = self.sigil_name(tok)
        v = self.values.get(name)
        if v is not None:
            return v
        later = self.all_defs.get(name)
        if later is not None:
            self.fail(f"value %{name} is used {role} before its definition on line {later.line}", tok)
        self.fail(f"undefined value %{name} used {role}", tok)

    def value(self, decl: lark.Tree) -> tuple[Value, lark.Tree | None]:
        """A value from `%name[: type][ !q<...>]`; also returns the quant tree (constants check it later)."""
        name_tok, type_tree, quant_tree = decl.children
        assert isinstance(name_tok, lark.Token)
        vtype = self.value_type(type_tree) if isinstance(type_tree, lark.Tree) else None
        v = Value(self.sigil_name(name_tok), vtype)
        if isinstance(quant_tree, lark.Tree):
            v.quant = self.quant(quant_tree, vtype)
        return v, quant_tree if isinstance(quant_tree, lark.Tree) else None

    def constant(self, graph: Graph, tree: lark.Tree) -> None:
        decl, payload = tree.children
        assert isinstance(decl, lark.Tree)
        v, _ = self.value(decl)
        if not isinstance(v.type, TensorType) or not v.type.is_static:
            self.fail(f"constant %{v.name} needs a tensor type with a static shape, like f32[2,3]", decl)
        assert v.type.shape is not None
        shape = tuple(int(d) for d in v.type.shape if d is not None)
        v.const = self.tensor(payload, v.type.dtype, shape, f"constant %{v.name}")
        graph.constants[v.name] = self.define(v, decl)

    def node(self, tree: lark.Tree) -> Node:
        outs_tree, op_tree, *rest = tree.children
        assert isinstance(outs_tree, lark.Tree) and isinstance(op_tree, lark.Tree)
        domain, op_type = self.op_ref(op_tree)
        operands = [c for c in rest if isinstance(c, lark.Token)]
        inputs: list[Value | None] = [
            None if t.type == "ABSENT" else self.use(t, f"as input {i} of {op_type}") for i, t in enumerate(operands)
        ]
        trailers = {c.data: c for c in rest if isinstance(c, lark.Tree)}
        attrs = self.attrs(trailers["attr_dict"]) if "attr_dict" in trailers else {}
        outputs: list[Value | None] = []
        for c in outs_tree.children:
            if isinstance(c, lark.Tree):
                outputs.append(self.define(self.value(c)[0], c))
            else:
                outputs.append(None)
        name = ""
        if "node_name" in trailers:
            tok = trailers["node_name"].children[0]
            assert isinstance(tok, lark.Token)
            name = self.unescape(tok)
        source = self.source_info(trailers["node_src"]) if "node_src" in trailers else None
        return Node(op_type, inputs, outputs, attrs=attrs, domain=domain, name=name, source=source)

    def op_ref(self, tree: lark.Tree) -> tuple[str, str]:
        first, second = tree.children
        assert isinstance(first, lark.Token)
        if second is None:
            return "", self.name(first)
        assert isinstance(second, lark.Token)
        return self.name(first), self.name(second)

    def source_info(self, tree: lark.Tree) -> SourceInfo:
        module, module_type = tree.children
        assert isinstance(module, lark.Token)
        return SourceInfo(
            self.unescape(module), self.unescape(module_type) if isinstance(module_type, lark.Token) else ""
        )

    # -- types --

    def value_type(self, tree: lark.Tree) -> ValueType:
        if tree.data == "seq_type":
            inner = tree.children[0]
            assert isinstance(inner, lark.Tree)
            return SequenceType(self.value_type(inner))
        if tree.data == "opt_type":
            inner = tree.children[0]
            assert isinstance(inner, lark.Tree)
            return OptionalType(self.value_type(inner))
        dtype_tok, shape_tree = tree.children
        assert isinstance(dtype_tok, lark.Token) and isinstance(shape_tree, lark.Tree)
        return TensorType(self.dtype(dtype_tok), self.shape(shape_tree))

    def shape(self, tree: lark.Tree) -> tuple[Dim, ...] | None:
        if tree.data == "unranked":
            return None
        dims: list[Dim] = []
        for tok in tree.children:
            if tok is None:
                continue
            assert isinstance(tok, lark.Token)
            if tok.type == "INT":
                if int(tok) < 0:
                    self.fail(f"dimension {tok} is negative; write ? for an unknown dimension", tok)
                dims.append(int(tok))
            elif tok.type == "QMARK":
                dims.append(None)
            else:
                dims.append(self.name(tok))
        return tuple(dims)

    # -- quantization --

    def quant(self, tree: lark.Tree, vtype: ValueType | None) -> QuantSpec | QuantType:
        opener, dtype_tok, scheme_tok, gran_tree, *param_trees = tree.children
        assert isinstance(opener, lark.Token) and isinstance(dtype_tok, lark.Token)
        assert isinstance(scheme_tok, lark.Token) and isinstance(gran_tree, lark.Tree)
        calibrated = opener.type == "Q_TYPE"
        dtype = self.dtype(dtype_tok)
        if not (dtype.is_integer or dtype.is_float):
            self.fail(f"{dtype} cannot be a quantized storage type; use an integer or float type", dtype_tok)
        try:
            scheme = Scheme(str(scheme_tok))
        except ValueError:
            self.fail(f"unknown quantization scheme {str(scheme_tok)!r}; expected sym or asym", scheme_tok)
        granularity = self.granularity(gran_tree)
        params = self.quant_params(param_trees, calibrated)
        observer_tok = params.get("observer")
        observer = self.name(observer_tok) if isinstance(observer_tok, lark.Token) else "minmax"
        qmin = self.int_of(params["qmin"], "qmin") if "qmin" in params else None
        qmax = self.int_of(params["qmax"], "qmax") if "qmax" in params else None
        self.check_range(dtype, qmin, qmax, params, tree)
        if not calibrated:
            try:
                return QuantSpec(dtype, scheme, granularity, observer, qmin, qmax)
            except ValueError as e:
                self.fail(f"bad quantization parameters: {e}", tree)
        for key in ("scale", "zp", "qmin", "qmax"):
            if key not in params:
                self.fail(f"a calibrated quantization type !q<...> needs {key}=", tree)
        assert qmin is not None and qmax is not None
        scale = self.quant_array(params["scale"], DType.F32, "scale")
        zp = self.quant_array(params["zp"], DType.F32 if dtype.is_float else DType.I32, "zero point")
        self.check_scale_count(granularity, scale, vtype, params["scale"])
        try:
            return QuantType(dtype, scheme, granularity, scale, zp, qmin, qmax, observer)
        except ValueError as e:
            self.fail(
                f"zero point of shape {list(zp.shape)} does not fit scales of shape {list(scale.shape)}: {e}",
                params["zp"],
            )

    def granularity(self, tree: lark.Tree) -> Granularity:
        kind_tok, args_tree = tree.children
        assert isinstance(kind_tok, lark.Token)
        kind = str(kind_tok)
        if kind not in _GRANULARITY_ARITY:
            self.fail(
                f"unknown granularity {kind!r}; expected per_tensor, per_channel(axis) or per_group(axis, size)",
                kind_tok,
            )
        args = (
            [int(t) for t in args_tree.children if isinstance(t, lark.Token)]
            if isinstance(args_tree, lark.Tree)
            else []
        )
        if len(args) != _GRANULARITY_ARITY[kind]:
            want = {
                "per_tensor": "per_tensor",
                "per_channel": "per_channel(axis)",
                "per_group": "per_group(axis, size)",
            }[kind]
            self.fail(f"{kind} takes {_GRANULARITY_ARITY[kind]} arguments, found {len(args)}; write {want}", kind_tok)
        if kind == "per_channel":
            return Granularity.per_channel(args[0])
        if kind == "per_group":
            if args[1] < 1:
                self.fail(f"per_group needs a positive group size, found {args[1]}", kind_tok)
            return Granularity.per_group(args[0], args[1])
        return Granularity.per_tensor()

    def quant_params(self, trees: list[object], calibrated: bool) -> dict[str, Leaf]:
        params: dict[str, Leaf] = {}
        allowed = _QUANT_KEYS if calibrated else _QUANT_KEYS[2:]
        for t in trees:
            assert isinstance(t, lark.Tree)
            key_tok, value = t.children
            assert isinstance(key_tok, lark.Token) and isinstance(value, (lark.Token, lark.Tree))
            key = str(key_tok)
            if key not in allowed:
                hint = (
                    "; !qspec<...> is not calibrated yet, write !q<...> for a type with scales"
                    if key in ("scale", "zp")
                    else ""
                )
                self.fail(f"unknown quantization parameter {key!r}; expected {', '.join(allowed)}{hint}", key_tok)
            if key in params:
                self.fail(f"quantization parameter {key} is given twice", key_tok)
            if key == "observer" and not (isinstance(value, lark.Token) and value.type in ("IDENT", "STRING")):
                self.fail("observer must be a name like minmax", value)
            params[key] = value
        return params

    def check_range(
        self, dtype: DType, qmin: int | None, qmax: int | None, params: dict[str, Leaf], tree: lark.Tree
    ) -> None:
        no_range = dtype.is_float and qmin == qmax == 0  # float storage (FP8) has no integer range: 0, 0
        if qmin is not None and qmax is not None and qmin >= qmax and not no_range:
            self.fail(f"qmin {qmin} must be below qmax {qmax}", params["qmin"])
        if dtype.is_integer:
            lo, hi = dtype.int_range
            for key, bound in (("qmin", qmin), ("qmax", qmax)):
                if bound is not None and not lo <= bound <= hi:
                    self.fail(f"{key} {bound} is outside the range of {dtype} [{lo}, {hi}]", params[key])

    def quant_array(self, value: Leaf, dtype: DType, what: str) -> np.ndarray:
        if isinstance(value, lark.Token) and value.type == "REF":
            return self.reference(value, None, None, what).numpy()
        if isinstance(value, lark.Token) and value.type not in ("INT", "FLOAT"):
            self.fail(f"{what} must be a number, a list of numbers or an @reference", value)
        if isinstance(value, lark.Tree) and value.data == "typed_value":
            t = self.typed_attr(value, what)
            assert isinstance(t.value, Tensor)
            if t.value.dtype is not dtype:
                self.fail(f"{what} must be {dtype}, found {t.value.dtype}", value)
            return t.value.numpy()
        shape, leaves = self.nested(value)
        return self.elements(leaves, dtype).reshape(shape)

    def check_scale_count(self, g: Granularity, scale: np.ndarray, vtype: ValueType | None, where: Leaf) -> None:
        if g.axis is None:
            if scale.size != 1:
                self.fail(f"per_tensor quantization takes one scale, found {scale.size}", where)
            return
        if g.group_size is not None or not isinstance(vtype, TensorType) or vtype.shape is None:
            return
        rank = len(vtype.shape)
        if not -rank <= g.axis < rank:
            self.fail(f"quantization axis {g.axis} is out of range for {rank}-d type", where)
        dim = vtype.shape[g.axis]
        if isinstance(dim, int) and (scale.ndim != 1 or scale.shape[0] != dim):
            self.fail(
                f"per_channel({g.axis}) needs {dim} scales (dimension {g.axis} of the value), "
                f"found {scale.size} in shape {list(scale.shape)}",
                where,
            )

    # -- attributes --

    def attrs(self, tree: lark.Tree) -> dict[str, Attr]:
        out: dict[str, Attr] = {}
        for a in tree.children:
            if a is None:
                continue
            assert isinstance(a, lark.Tree)
            name_tok, value = a.children
            assert isinstance(name_tok, lark.Token) and isinstance(value, (lark.Token, lark.Tree))
            name = self.name(name_tok)
            if name in out:
                self.fail(f"attribute {name} is given twice", name_tok)
            out[name] = self.attr_value(value, name)
        return out

    def attr_value(self, value: Leaf, name: str) -> Attr:
        if isinstance(value, lark.Token):
            if value.type == "INT":
                return Attr(AttrKind.INT, int(value))
            if value.type == "FLOAT":
                return Attr(AttrKind.FLOAT, float(value))
            return Attr(AttrKind.STRING, self.unescape(value))
        if value.data == "typed_value":
            return self.typed_attr(value, name)
        items = _elements_of(value)
        if not items:
            self.fail(f"empty list for attribute {name} needs its kind: write ints[], floats[] or strings[]", value)
        kinds = {"INT": AttrKind.INTS, "FLOAT": AttrKind.FLOATS, "STRING": AttrKind.STRINGS}
        first = items[0]
        if not isinstance(first, lark.Token) or first.type not in kinds:
            self.fail(f"attribute {name}: lists hold integers, floats or strings only", first)
        kind = kinds[first.type]
        for item in items[1:]:
            if not isinstance(item, lark.Token) or kinds.get(item.type) is not kind:
                self.fail(f"attribute {name}: every element of a list must be like the first ({kind.value})", item)
        tokens = [t for t in items if isinstance(t, lark.Token)]
        if kind is AttrKind.INTS:
            return Attr(kind, tuple(int(t) for t in tokens))
        if kind is AttrKind.FLOATS:
            return Attr(kind, tuple(float(t) for t in tokens))
        return Attr(kind, tuple(self.unescape(t) for t in tokens))

    def typed_attr(self, tree: lark.Tree, name: str) -> Attr:
        head, shape_tree, payload = tree.children
        assert isinstance(head, lark.Token) and isinstance(shape_tree, lark.Tree)
        word = str(head)
        if payload is None:
            kinds = {"ints": AttrKind.INTS, "floats": AttrKind.FLOATS, "strings": AttrKind.STRINGS}
            if word in kinds and shape_tree.data == "shape" and not any(shape_tree.children):
                return Attr(kinds[word], ())
            if word in kinds:
                self.fail(f"the kind prefix {word}[] is only for empty lists; write the elements as [...]", head)
            if word in {d.value for d in DType}:
                self.fail(f"tensor attribute {name} needs a value after its type, like [..] or @name", head)
            self.fail(
                f"unknown attribute kind {word!r}; expected ints[], floats[], strings[] or a tensor "
                "like f32[2] [1.0, 2.0]",
                head,
            )
        dtype = self.dtype(head)
        shape = self.shape(shape_tree)
        if shape is None or not all(isinstance(d, int) for d in shape):
            self.fail(f"tensor attribute {name} needs a static shape", head)
        assert isinstance(payload, (lark.Token, lark.Tree))
        dims = tuple(int(d) for d in shape if d is not None)
        return Attr(AttrKind.TENSOR, self.tensor(payload, dtype, dims, f"attribute {name}"))

    # -- tensors --

    def reference(self, tok: lark.Token, dtype: DType | None, shape: tuple[int, ...] | None, what: str) -> Tensor:
        key = self.sigil_name(tok)
        t = self.tensors.get(key)
        if t is None:
            if not self.tensors:
                self.fail(
                    f"{what} refers to sidecar tensor @{key}, but no sidecar tensors were given "
                    "(load .qir files with quantir.ir.load, or pass tensors= to parse)",
                    tok,
                )
            self.fail(f"{what} refers to @{key}, which is not in the sidecar", tok)
        if dtype is not None and (t.dtype, t.shape) != (dtype, shape):
            want = f"{dtype}{list(shape or ())}"
            self.fail(f"sidecar tensor @{key} is {t.dtype}{list(t.shape)}, but {what} is {want}", tok)
        return t

    def tensor(self, payload: object, dtype: DType, shape: tuple[int, ...], what: str) -> Tensor:
        assert isinstance(payload, (lark.Token, lark.Tree))
        if isinstance(payload, lark.Token) and payload.type == "REF":
            return self.reference(payload, dtype, shape, what)
        nested_shape, leaves = self.nested(payload)
        size = math.prod(shape)
        if nested_shape != shape and not (len(nested_shape) == 1 and len(leaves) == size):
            self.fail(
                f"{what} is {dtype}{list(shape)} ({size} values) but the literal has shape {list(nested_shape)}",
                payload,
            )
        array = self.elements(leaves, dtype).reshape(shape)
        return Tensor(dtype, shape, array=array)

    def nested(self, node: Leaf) -> tuple[tuple[int, ...], list[Leaf]]:
        """The shape and flat elements of a (nested) list literal; a scalar has shape ()."""
        if isinstance(node, lark.Token) or node.data != "array":
            return (), [node]
        items = _elements_of(node)
        parts = [self.nested(c) for c in items]
        if not parts:
            return (0,), []
        inner = parts[0][0]
        for (shape, _), item in zip(parts, items, strict=True):
            if shape != inner:
                self.fail(f"ragged list: this element has shape {list(shape)}, the first has {list(inner)}", item)
        return (len(parts), *inner), [leaf for _, leaves in parts for leaf in leaves]

    def elements(self, leaves: list[Leaf], dtype: DType) -> np.ndarray:
        """The flat storage array of `leaves` read as `dtype`, each checked to be exact and in range."""
        codec = minifloat(dtype)
        storage = dtype.storage
        if codec is not None:
            return np.array([self.minifloat_code(leaf, dtype) for leaf in leaves], dtype=storage)
        if dtype.is_integer:
            lo, hi = dtype.int_range
            return np.array([self.int_in_range(leaf, dtype, lo, hi) for leaf in leaves], dtype=storage)
        if dtype is DType.BOOL:
            return np.array([self.bool_element(leaf) for leaf in leaves], dtype=storage)
        if dtype is DType.STRING:
            out = np.empty(len(leaves), dtype=object)
            out[:] = [self.string_element(leaf) for leaf in leaves]
            return out
        if dtype in (DType.C64, DType.C128):
            part = np.float32 if dtype is DType.C64 else np.float64
            return np.array([self.complex_element(leaf, dtype, part) for leaf in leaves], dtype=storage)
        return self.floats(leaves, dtype)

    def number(self, leaf: Leaf, dtype: DType) -> float:
        if not isinstance(leaf, lark.Token) or leaf.type not in ("INT", "FLOAT"):
            self.fail(f"expected a number for {dtype}", leaf)
        return float(leaf)

    def floats(self, leaves: list[Leaf], dtype: DType) -> np.ndarray:
        values = np.array([self.number(leaf, dtype) for leaf in leaves], dtype=np.float64)
        with np.errstate(over="ignore"):
            out = values.astype(dtype.storage)
        overflow = np.flatnonzero(np.isinf(out) & np.isfinite(values))
        if overflow.size:
            leaf = leaves[int(overflow[0])]
            self.fail(f"{leaf} overflows {dtype}", leaf)
        return out

    def complex_element(self, leaf: Leaf, dtype: DType, part: type[np.floating]) -> complex:
        if not isinstance(leaf, lark.Tree) or leaf.data != "complex":
            self.fail(f"expected a complex number like (1.0, -2.0) for {dtype}", leaf)
        re_tok, im_tok = leaf.children
        assert isinstance(re_tok, lark.Token) and isinstance(im_tok, lark.Token)
        return complex(part(self.number(re_tok, dtype)), part(self.number(im_tok, dtype)))

    def minifloat_code(self, leaf: Leaf, dtype: DType) -> int:
        codec = minifloat(dtype)
        assert codec is not None
        if isinstance(leaf, lark.Token) and leaf.type == "HEX":
            code = int(leaf, 16)
            if code >= codec.values.size:
                self.fail(f"bit pattern {leaf} does not fit {dtype} ({dtype.bits} bits)", leaf)
            return code
        code_or_none = codec.encode(self.number(leaf, dtype))
        if code_or_none is None:
            self.fail(
                f"{leaf} is not exactly representable in {dtype}; write an exact value or a 0x.. bit pattern", leaf
            )
        return code_or_none

    def int_in_range(self, leaf: Leaf, dtype: DType, lo: int, hi: int) -> int:
        if not isinstance(leaf, lark.Token) or leaf.type != "INT":
            self.fail(f"expected an integer for {dtype}", leaf)
        x = int(leaf)
        if not lo <= x <= hi:
            self.fail(f"{x} is outside the range of {dtype} [{lo}, {hi}]", leaf)
        return x

    def bool_element(self, leaf: Leaf) -> bool:
        if not isinstance(leaf, lark.Token) or leaf.type not in ("TRUE", "FALSE"):
            self.fail("expected true or false for bool", leaf)
        return leaf.type == "TRUE"

    def string_element(self, leaf: Leaf) -> str:
        if not isinstance(leaf, lark.Token) or leaf.type != "STRING":
            self.fail("expected a quoted string for string", leaf)
        return self.unescape(leaf)
