"""Every user-facing parse error: its message, its line, and the caret under the offending column."""

from __future__ import annotations

import numpy as np
import pytest

from quantir.ir import DType, ParseError, Tensor, load, parse
from quantir.ir.errors import SerializationError

HEADER = 'qir 1 ir_version 8 opset {"": 17}\n'
EOL = "<end of line>"


def parse_error(text: str, **kwargs: object) -> ParseError:
    with pytest.raises(ParseError) as info:
        parse(text, filename="m.qir", **kwargs)  # type: ignore[arg-type]
    return info.value


def check(e: ParseError, message: str, line: int, at: str, text: str, occurrence: int = 0) -> None:
    """`e` says `message` and puts its caret under the `occurrence`-th `at` on `line` of `text`."""
    source_line = text.split("\n")[line - 1]
    column = len(source_line) if at == EOL else -1
    for _ in range(occurrence + 1 if at != EOL else 0):
        column = source_line.index(at, column + 1)
    column += 1
    assert message in str(e)
    assert (e.line, e.column) == (line, column), str(e)
    first, echoed, caret = str(e).split("\n")
    assert first.startswith(f"m.qir:{line}:{column}: ")
    assert echoed == "    " + source_line
    assert caret == "    " + " " * (column - 1) + "^"


def graph(*lines: str, inputs: str = "%x: f32[4]", ret: str = "%x") -> str:
    body = "".join(f"  {line}\n" for line in lines)
    return f"{HEADER}graph g({inputs}) {{\n{body}  return {ret}\n}}\n"


# (description, text, expected message, line, caret anchor[, occurrence])
CASES = [
    ("missing paren", graph("%y = Relu(%x", ret="%y"), "unexpected 'return'; expected ')' or ','", 4, "return"),
    ("bad character", graph("%y = Relu(%x) $", ret="%y"), "unexpected '$'; expected '#name', '#src', '('", 3, "$"),
    ("unclosed graph", graph().rstrip("}\n"), "unexpected end of text; expected ',' or '}'", 3, EOL),
    ("value without %", graph("y = Relu(%x)"), "expected '(', '_', 'const', 'return' or a value name like %x", 3, "y"),
    ("missing type after colon", graph(inputs="%x: "), "unexpected ')'; expected 'opt', 'seq' or a name", 2, ")"),
    ("version", graph().replace("qir 1", "qir 2"), "unsupported qir format version 2", 1, "2"),
    ("unknown dtype", graph(inputs="%x: f33[4]"), "unknown dtype 'f33'; expected one of f32, f64, f16, bf16", 2, "f33"),
    ("undefined value", graph("%y = Relu(%foo)", ret="%y"), "undefined value %foo used as input 0 of Relu", 3, "%foo"),
    (
        "use before definition",
        graph("%y = Relu(%z)", "%z = Relu(%x)", ret="%y"),
        "value %z is used as input 0 of Relu before its definition on line 4",
        3,
        "%z",
    ),
    ("defined twice", graph("%x = Relu(%x)"), "value %x is defined twice (first on line 2)", 3, "%x"),
    ("undefined output", graph(ret="%nope"), "undefined value %nope used as a graph output", 3, "%nope"),
    ("unknown attr kind", graph("%y = Relu(%x) {a=int64s[]}"), "unknown attribute kind 'int64s'", 3, "int64s"),
    ("empty list", graph("%y = Relu(%x) {axes=[]}"), "empty list for attribute axes needs its kind", 3, "[]"),
    ("mixed list", graph("%y = Relu(%x) {a=[1, 2.0]}"), "every element of a list must be like the first", 3, "2.0"),
    ("nested list", graph("%y = Relu(%x) {a=[[1]]}"), "lists hold integers, floats or strings only", 3, "[1]"),
    ("kind with elements", graph("%y = Relu(%x) {a=ints[2] [1, 2]}"), "unknown dtype 'ints'", 3, "ints"),
    ("kind prefix non-empty", graph("%y = Relu(%x) {a=ints[2]}"), "only for empty lists", 3, "ints"),
    ("tensor attr without value", graph("%y = Relu(%x) {t=f32[2]}"), "needs a value after its type", 3, "f32"),
    ("tensor attr symbolic", graph("%y = Relu(%x) {t=f32[N] [1.0]}"), "needs a static shape", 3, "f32"),
    ("duplicate attr", graph("%y = Relu(%x) {a=1, a=2}"), "attribute a is given twice", 3, "a=", 1),
    (
        "per_channel scale count",
        graph(inputs="%x: f32[4] !q<i8 sym per_channel(0) scale=[1.0, 2.0] zp=0 qmin=-127 qmax=127>"),
        "per_channel(0) needs 4 scales (dimension 0 of the value), found 2",
        2,
        "[1.0",
    ),
    (
        "per_tensor scale count",
        graph(inputs="%x: f32[4] !q<i8 sym per_tensor scale=[1.0, 2.0] zp=0 qmin=-127 qmax=127>"),
        "per_tensor quantization takes one scale, found 2",
        2,
        "[1.0",
    ),
    (
        "axis out of range",
        graph(inputs="%x: f32[4] !q<i8 sym per_channel(3) scale=[1.0] zp=0 qmin=-127 qmax=127>"),
        "quantization axis 3 is out of range for 1-d type",
        2,
        "[1.0",
    ),
    (
        "qmin above qmax",
        graph(inputs="%x: f32[4] !qspec<i8 sym per_tensor qmin=5 qmax=5>"),
        "qmin 5 must be below qmax 5",
        2,
        "5",
    ),
    (
        "qmax out of dtype range",
        graph(inputs="%x: f32[4] !qspec<u8 asym per_tensor qmin=0 qmax=300>"),
        "qmax 300 is outside the range of u8 [0, 255]",
        2,
        "300",
    ),
    (
        "unknown quant parameter",
        graph(inputs="%x: f32[4] !qspec<i8 sym per_tensor bits=8>"),
        "unknown quantization parameter 'bits'; expected qmin, qmax, observer",
        2,
        "bits",
    ),
    (
        "scale on a spec",
        graph(inputs="%x: f32[4] !qspec<i8 sym per_tensor scale=1.0>"),
        "!qspec<...> is not calibrated yet, write !q<...>",
        2,
        "scale",
    ),
    (
        "duplicate quant parameter",
        graph(inputs="%x: f32[4] !qspec<i8 sym per_tensor qmin=0 qmin=1>"),
        "quantization parameter qmin is given twice",
        2,
        "qmin",
        1,
    ),
    (
        "missing scale",
        graph(inputs="%x: f32[4] !q<i8 sym per_tensor zp=0 qmin=-127 qmax=127>"),
        "a calibrated quantization type !q<...> needs scale=",
        2,
        "!q<",
    ),
    (
        "unknown scheme",
        graph(inputs="%x: f32[4] !qspec<i8 symmetric per_tensor>"),
        "unknown quantization scheme 'symmetric'; expected sym or asym",
        2,
        "symmetric",
    ),
    (
        "unknown granularity",
        graph(inputs="%x: f32[4] !qspec<i8 sym per_row>"),
        "unknown granularity 'per_row'; expected per_tensor, per_channel(axis) or per_group(axis, size)",
        2,
        "per_row",
    ),
    (
        "granularity arity",
        graph(inputs="%x: f32[4] !qspec<i8 sym per_channel>"),
        "per_channel takes 1 arguments, found 0; write per_channel(axis)",
        2,
        "per_channel",
    ),
    (
        "group size",
        graph(inputs="%x: f32[4] !qspec<i8 sym per_group(0, 0)>"),
        "per_group needs a positive group size, found 0",
        2,
        "per_group",
    ),
    (
        "non-quantizable storage",
        graph(inputs="%x: f32[4] !qspec<string sym per_tensor>"),
        "string cannot be a quantized storage type",
        2,
        "string",
    ),
    (
        "observer is not a name",
        graph(inputs="%x: f32[4] !qspec<i8 sym per_tensor observer=3>"),
        "observer must be a name like minmax",
        2,
        "3>",
    ),
    (
        "zero point shape",
        graph(inputs="%x: f32[4] !q<i8 asym per_group(0, 2) scale=[1.0, 2.0] zp=[1, 2, 3] qmin=-127 qmax=127>"),
        "zero point of shape [3] does not fit scales of shape [2]",
        2,
        "[1, 2, 3]",
    ),
    (
        "zero point is int32",
        graph(inputs="%x: f32[4] !q<i8 asym per_tensor scale=1.0 zp=1.5 qmin=-127 qmax=127>"),
        "expected an integer for i32",
        2,
        "1.5",
    ),
    (
        "literal count",
        graph("const %c: f32[2] = [1.0, 2.0, 3.0]"),
        "f32[2] (2 values) but the literal has shape [3]",
        3,
        "[1.0",
    ),
    (
        "ragged",
        graph("const %c: f32[2,2] = [[1.0, 2.0], [3.0]]"),
        "ragged list: this element has shape [1]",
        3,
        "[3.0]",
    ),
    ("int range", graph("const %c: i4[2] = [7, 8]"), "8 is outside the range of i4 [-8, 7]", 3, "8"),
    ("float for int", graph("const %c: i64[1] = [1.5]"), "expected an integer for i64", 3, "1.5"),
    ("bool", graph("const %c: bool[1] = [1]"), "expected true or false for bool", 3, "1]", 1),
    ("string element", graph("const %c: string[1] = [1]"), "expected a quoted string for string", 3, "1]", 1),
    ("complex element", graph("const %c: c64[1] = [1.0]"), "expected a complex number like (1.0, -2.0)", 3, "1.0"),
    ("overflow", graph("const %c: f16[1] = [1e+10]"), "1e+10 overflows f16", 3, "1e+10"),
    ("inexact bf16", graph("const %c: bf16[1] = [0.1]"), "0.1 is not exactly representable in bf16", 3, "0.1"),
    ("inexact fp8", graph("const %c: f8e4m3fn[1] = [500.0]"), "not exactly representable in f8e4m3fn", 3, "500"),
    ("hex too wide", graph("const %c: f8e5m2[1] = [0x1ff]"), "bit pattern 0x1ff does not fit f8e5m2 (8 bits)", 3, "0x"),
    ("hex for native float", graph("const %c: f32[1] = [0x1]"), "expected a number for f32", 3, "0x1"),
    ("constant symbolic", graph("const %c: f32[N] = [1.0]"), "needs a tensor type with a static shape", 3, "%c"),
    ("constant without type", graph("const %c = [1.0]"), "needs a tensor type with a static shape", 3, "%c"),
    (
        "negative dim",
        graph(inputs="%x: f32[-1]"),
        "dimension -1 is negative; write ? for an unknown dimension",
        2,
        "-1",
    ),
    ("unknown escape", graph('%y = Relu(%x) {s="a\\qb"}', ret="%y"), "unknown escape \\q in a string", 3, "\\q"),
    (
        "escape beyond unicode",
        graph('%y = Relu(%x) {s="\\UFFFFFFFF"}', ret="%y"),
        "escape \\UFFFFFFFF is beyond the last unicode character",
        3,
        '"\\U',
    ),
    (
        "duplicate opset",
        graph().replace('{"": 17}', '{"": 17, "": 18}'),
        "opset domain '' is listed twice",
        1,
        '""',
        1,
    ),
    (
        "missing sidecar",
        graph("const %w: f32[100] = @w"),
        "constant %w refers to sidecar tensor @w, but no sidecar tensors were given",
        3,
        "@w",
    ),
]


@pytest.mark.parametrize(
    ("text", "message", "line", "at", "occurrence"),
    [(c[1], c[2], c[3], c[4], c[5] if len(c) > 5 else 0) for c in CASES],
    ids=[str(c[0]) for c in CASES],
)
def test_parse_error(text: str, message: str, line: int, at: str, occurrence: int) -> None:
    check(parse_error(text), message, line, at, text, occurrence)


def test_sidecar_tensor_not_found() -> None:
    text = graph("const %w: f32[100] = @w")
    e = parse_error(text, tensors={"v": Tensor.from_numpy(np.zeros(100, np.float32))})
    check(e, "constant %w refers to @w, which is not in the sidecar", 3, "@w", text)


def test_sidecar_tensor_of_the_wrong_type() -> None:
    text = graph("const %w: f32[100] = @w")
    e = parse_error(text, tensors={"w": Tensor.from_numpy(np.zeros(10, np.int8))})
    check(e, "sidecar tensor @w is i8[10], but constant %w is f32[100]", 3, "@w", text)


def test_sidecar_scale_reference_not_found() -> None:
    text = graph(inputs="%x: f32[4] !q<i8 sym per_tensor scale=@s zp=0 qmin=-127 qmax=127>")
    e = parse_error(text, tensors={"v": Tensor.from_numpy(np.zeros(1, np.float32))})
    check(e, "scale refers to @s, which is not in the sidecar", 2, "@s", text)


def test_tabs_keep_the_caret_aligned() -> None:
    text = HEADER + "graph g(%x: f32[4]) {\n\t%y = Relu(%foo)\n  return %y\n}\n"
    e = parse_error(text)
    assert str(e).split("\n")[2] == "    \t          ^"


def test_errors_never_leak_lark_exceptions() -> None:
    e = parse_error("qir")
    assert "unexpected end of text; expected an integer" in str(e)
    assert e.__cause__ is None and e.__suppress_context__


def test_load_reports_the_file_name(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    path = tmp_path / "bad.qir"
    path.write_text(graph("%y = Relu(%foo)", ret="%y"), encoding="utf-8")
    with pytest.raises(ParseError, match=rf"^{path}:3:13: undefined value %foo"):
        load(path)
    with pytest.raises(SerializationError, match="cannot read"):
        load(tmp_path / "missing.qir")


def test_all_dtypes_are_listed_for_an_unknown_dtype() -> None:
    e = parse_error(graph(inputs="%x: float32[4]"))
    assert all(d.value in str(e) for d in DType)
