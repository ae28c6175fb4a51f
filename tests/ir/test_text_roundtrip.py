"""The text form round-trips: golden fixtures, exact values of every dtype, and the safetensors sidecar."""

from __future__ import annotations

import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
from safetensors import safe_open

from quantir.ir import (
    Attr,
    AttrKind,
    DType,
    ExternalData,
    Granularity,
    Graph,
    Node,
    ParseError,
    QuantType,
    Scheme,
    SerializationError,
    SourceInfo,
    Tensor,
    TensorType,
    Value,
    first_difference,
    format_context,
    load,
    parse,
    print_graph,
    save,
    verify,
)
from quantir.ir.printer import minifloat, print_graph_with_tensors
from quantir.ir.sidecar import read_safetensors, write_safetensors
from quantir.ir.textio import sidecar_path

GOLDEN = sorted((Path(__file__).parent / "golden").glob("*.qir"))
RNG = np.random.default_rng(0)


def round_trip(g: Graph, **kwargs: int) -> Graph:
    text = print_graph(g, **kwargs)
    back = parse(text)
    assert first_difference(g, back) is None, text
    assert print_graph(back, **kwargs) == text
    return back


def single_node_graph(node_attrs: dict[str, Attr]) -> Graph:
    g = Graph("g")
    x = Value("x", TensorType(DType.F32, (2,)))
    g.inputs = [x]
    n = g.append(Node("Custom", [x], [Value("y")], attrs=node_attrs))
    g.outputs = [n.output()]
    return g


# ---- golden fixtures ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", GOLDEN, ids=[p.name for p in GOLDEN])
def test_golden_fixture_is_canonical(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    g = parse(text, filename=str(path))
    assert print_graph(g) == text
    assert first_difference(parse(print_graph(g)), g) is None


def test_golden_fixtures_cover_the_required_cases() -> None:
    assert {p.stem for p in GOLDEN} >= {"cnn", "attrs_and_names", "optional_io", "types", "dtypes"}


def test_golden_cnn_is_a_valid_quantized_graph() -> None:
    g = parse((Path(__file__).parent / "golden" / "cnn.qir").read_text(encoding="utf-8"))
    verify(g)
    conv = g.nodes[0]
    assert conv.source == SourceInfo("conv1", "torch.nn.Conv2d") and conv.name == "/conv1/Conv"
    w = g.constants["conv1.weight"]
    assert isinstance(w.quant, QuantType) and w.quant.granularity == Granularity.per_channel(0)
    assert w.quant.scale.dtype == np.float32 and w.quant.scale.tolist() == [0.0078125, np.float32(0.012345679)]


# ---- spelling of names, types and attributes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "spelled"),
    [
        ("x", "%x"),
        ("conv1.weight", "%conv1.weight"),
        ("onnx::Conv_12", '%"onnx::Conv_12"'),
        ("/conv1/Conv_output_0", '%"/conv1/Conv_output_0"'),
        ("a b", '%"a b"'),
        ('q"', '%"q\\""'),
        ("ü", '%"ü"'),
        ("", '%""'),
        ("new\nline", '%"new\\nline"'),
    ],
)
def test_value_names_are_quoted_only_when_needed(name: str, spelled: str) -> None:
    g = Graph("g")
    g.inputs = [Value(name, TensorType(DType.F32, (1,)))]
    g.outputs = list(g.inputs)
    text = print_graph(g)
    assert f"graph g({spelled}: f32[1])" in text
    round_trip(g)


def test_absent_inputs_and_outputs_print_as_underscore() -> None:
    g = Graph("g", opset_imports={"": 17, "com.microsoft": 1})
    x = Value("x", TensorType(DType.F32, (2,)))
    g.inputs = [x]
    n = g.append(Node("Foo", [x, None, x], [None, Value("y"), None], domain="com.microsoft"))
    g.outputs = [n.output(1)]
    assert "  _, %y, _ = com.microsoft::Foo(%x, _, %x)\n" in print_graph(g)
    round_trip(g)


def test_node_without_outputs_and_inputs() -> None:
    g = Graph("g")
    g.append(Node("Print", [], []))
    assert "  () = Print()\n" in print_graph(g)
    round_trip(g)


@pytest.mark.parametrize("dtype", list(DType), ids=[d.value for d in DType])
def test_every_dtype_round_trips_as_value_type(dtype: DType) -> None:
    g = Graph("g")
    g.inputs = [Value("a", TensorType(dtype, ("N", None, 3))), Value("b", TensorType(dtype))]
    assert f"%a: {dtype.value}[N,?,3], %b: {dtype.value}[*]" in print_graph(g)
    round_trip(g)


def test_symbolic_dims_that_are_not_identifiers_are_quoted() -> None:
    g = Graph("g")
    g.inputs = [Value("a", TensorType(DType.F32, ("seq len", "?", "*", "nan", "", 0)))]
    assert '%a: f32["seq len","?","*","nan","",0]' in print_graph(g)
    round_trip(g)


@pytest.mark.parametrize(
    ("kind", "value", "spelled"),
    [
        (AttrKind.INT, -(2**63), "-9223372036854775808"),
        (AttrKind.FLOAT, 0.1, "0.1"),
        (AttrKind.FLOAT, 1.0, "1.0"),
        (AttrKind.FLOAT, -0.0, "-0.0"),
        (AttrKind.FLOAT, 5e-324, "5e-324"),
        (AttrKind.FLOAT, float("nan"), "nan"),
        (AttrKind.FLOAT, float("-inf"), "-inf"),
        (AttrKind.STRING, 'a"b\\c\n\x00ü', '"a\\"b\\\\c\\n\\x00ü"'),
        (AttrKind.INTS, (), "ints[]"),
        (AttrKind.FLOATS, (), "floats[]"),
        (AttrKind.STRINGS, (), "strings[]"),
        (AttrKind.INTS, (1, -2), "[1, -2]"),
        (AttrKind.FLOATS, (1.0, 2.5), "[1.0, 2.5]"),
        (AttrKind.STRINGS, ("", "x"), '["", "x"]'),
        (AttrKind.TENSOR, Tensor.from_numpy(np.array([[1, 2]], np.int64)), "i64[1,2] [[1, 2]]"),
        (AttrKind.TENSOR, Tensor.from_numpy(np.array(0.5, np.float32)), "f32[] 0.5"),
    ],
)
def test_attribute_kinds_are_spelled_distinctly(kind: AttrKind, value: object, spelled: str) -> None:
    g = single_node_graph({"a": Attr(kind, value)})  # type: ignore[arg-type]
    assert f"{{a={spelled}}}" in print_graph(g)
    back = round_trip(g)
    assert back.nodes[0].attrs["a"].kind is kind


def test_float_attributes_round_trip_exactly() -> None:
    bits = RNG.integers(0, 2**63, size=500, dtype=np.int64).astype(np.uint64)
    floats = tuple(float(x) for x in bits.view(np.float64) if not np.isnan(x))
    back = round_trip(single_node_graph({"f": Attr(AttrKind.FLOATS, floats)}))
    got = back.nodes[0].attrs["f"].value
    assert np.asarray(got, np.float64).tobytes() == np.asarray(floats, np.float64).tobytes()


def test_attributes_print_sorted_by_name() -> None:
    g = single_node_graph({"b": Attr.of(1), "a": Attr.of(2)})
    assert "{a=2, b=1}" in print_graph(g)


def test_node_name_and_provenance_round_trip() -> None:
    g = Graph("g")
    x = Value("x", TensorType(DType.F32, (1,)))
    g.inputs = [x]
    g.append(Node("Relu", [x], [Value("y")], name='/layer "1"/Relu', source=SourceInfo("layer1.0", "torch.nn.ReLU")))
    g.append(Node("Relu", [x], [Value("z")], source=SourceInfo("only.module")))
    text = print_graph(g)
    assert '#name("/layer \\"1\\"/Relu") #src("layer1.0", "torch.nn.ReLU")' in text
    assert '= Relu(%x) #src("only.module")\n' in text
    round_trip(g)


# ---- quantization annotations -----------------------------------------------------------------------------


def test_per_channel_scales_round_trip_bit_exactly() -> None:
    bits = RNG.integers(1, 0x7F800000, size=16, dtype=np.uint32)  # every positive finite float32
    scale = bits.view(np.float32)
    zp = RNG.integers(-128, 128, size=16).astype(np.int32)
    q = QuantType(DType.I8, Scheme.ASYM, Granularity.per_channel(0), scale, zp, -128, 127)
    g = Graph("g")
    g.add_constant("w", Tensor.from_numpy(np.zeros((16, 1), np.float32)), quant=q)
    back = round_trip(g)
    got = back.constants["w"].quant
    assert isinstance(got, QuantType) and got.scale.tobytes() == scale.tobytes()
    assert got.zero_point.tobytes() == zp.tobytes()


def test_large_scale_arrays_go_to_the_sidecar() -> None:
    q = QuantType(
        DType.I8, Scheme.SYM, Granularity.per_channel(0), np.full(40, 0.5, np.float32), np.zeros(40), -127, 127
    )
    g = Graph("g")
    g.add_constant("w", Tensor.from_numpy(np.ones((40, 1), np.float32)), quant=q)
    text, side = print_graph_with_tensors(g)
    assert "scale=@w.scale zp=0 " in text and "= @w\n" in text
    assert set(side) == {"w", "w.scale"}
    assert first_difference(parse(text, tensors=side), g) is None


def test_float_storage_quant_types_keep_float_zero_points() -> None:
    q = QuantType(DType.F8E4M3FN, Scheme.SYM, Granularity.per_tensor(), np.array(1 / 448), np.array(0.0), -448, 448)
    g = Graph("g")
    g.inputs = [Value("x", TensorType(DType.BF16, (4,)), quant=q)]
    assert "!q<f8e4m3fn sym per_tensor scale=0.002232143 zp=0.0 qmin=-448 qmax=448 observer=minmax>" in print_graph(g)
    round_trip(g)


def test_fp8_quant_types_without_an_integer_range_round_trip() -> None:
    """compute_fp8_scale's types (qmin = qmax = 0: float storage has no integer range) parse back: before, the parser
    refused "qmin 0 must be below qmax 0", so no FP8 IR could be saved as text."""
    q = QuantType(DType.F8E4M3FN, Scheme.SYM, Granularity.per_tensor(), np.array(0.0625), np.array(0.0), 0, 0, "maxabs")
    g = Graph("g")
    g.inputs = [Value("x", TensorType(DType.F32, (4,)), quant=q)]
    assert "qmin=0 qmax=0 observer=maxabs>" in print_graph(g)
    back = round_trip(g)
    assert first_difference(back, g) is None
    with pytest.raises(ParseError, match="qmin 3 must be below qmax 1"):
        parse(print_graph(g).replace("qmin=0 qmax=0", "qmin=3 qmax=1"))


# ---- constants of every dtype ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [DType.F8E4M3FN, DType.F8E4M3FNUZ, DType.F8E5M2, DType.F8E5M2FNUZ, DType.F4E2M1])
def test_minifloat_tables_match_ml_dtypes(dtype: DType) -> None:
    codec = minifloat(dtype)
    assert codec is not None
    reference = {
        DType.F8E4M3FN: ml_dtypes.float8_e4m3fn,
        DType.F8E4M3FNUZ: ml_dtypes.float8_e4m3fnuz,
        DType.F8E5M2: ml_dtypes.float8_e5m2,
        DType.F8E5M2FNUZ: ml_dtypes.float8_e5m2fnuz,
        DType.F4E2M1: ml_dtypes.float4_e2m1fn,
    }[dtype]
    expected = np.arange(codec.values.size, dtype=np.uint8).view(reference).astype(np.float32)
    assert np.array_equal(codec.values, expected, equal_nan=True)


@pytest.mark.parametrize(
    "dtype", [DType.BF16, DType.F8E4M3FN, DType.F8E4M3FNUZ, DType.F8E5M2, DType.F8E5M2FNUZ, DType.F4E2M1]
)
def test_every_minifloat_code_round_trips_inline(dtype: DType) -> None:
    n = 1 << dtype.bits
    codes = np.arange(n, dtype=dtype.storage) if n <= 256 else RNG.permutation(n)[:4096].astype(np.uint16)
    g = Graph("g")
    g.add_constant("c", Tensor(dtype, (codes.size,), array=codes))
    back = round_trip(g, inline_limit=1 << 16)
    c = back.constants["c"].const
    assert c is not None and c.numpy().tobytes() == codes.tobytes()


def test_minifloat_nan_payloads_print_as_bit_patterns() -> None:
    g = Graph("g")
    g.add_constant("b", Tensor(DType.BF16, (3,), array=np.array([0x7FC0, 0xFFC0, 0x7F81], np.uint16)))
    assert "= [nan, 0xffc0, 0x7f81]" in print_graph(g)


def test_every_dtype_constant_round_trips() -> None:
    g = parse((Path(__file__).parent / "golden" / "dtypes.qir").read_text(encoding="utf-8"))
    assert {v.const.dtype for v in g.constants.values() if v.const is not None} == set(DType)


# ---- format_context ----------------------------------------------------------------------------------------


def test_format_context_marks_the_node_and_numbers_lines() -> None:
    g = parse((Path(__file__).parent / "golden" / "cnn.qir").read_text(encoding="utf-8"))
    text = print_graph(g).splitlines()
    relu = g.nodes[1]
    ctx = format_context(g, relu, radius=1).splitlines()
    assert len(ctx) == 3
    assert ctx[1].startswith("  >>  9 | %relu_out")
    assert ctx[1].endswith(text[8].strip())
    assert ctx[0].startswith("      8 | %conv1_out")
    assert ctx[2].startswith("     10 | %pool_out")


def test_format_context_of_a_node_outside_the_graph() -> None:
    g = Graph("g")
    stray = Node("Relu", [], [Value("y")])
    assert format_context(g, stray).startswith("  >> %y = Relu()")


# ---- the safetensors sidecar ------------------------------------------------------------------------------


def graph_with_constants(constants: dict[str, Tensor]) -> Graph:
    g = Graph("g")
    for name, t in constants.items():
        g.add_constant(name, t)
    g.outputs = list(g.constants.values())
    return g


def random_tensor(dtype: DType, shape: tuple[int, ...]) -> Tensor:
    size = int(np.prod(shape))
    if dtype in (DType.I4, DType.U4):
        lo, hi = dtype.int_range
        array = RNG.integers(lo, hi + 1, size=size).astype(dtype.storage)
    elif dtype is DType.F4E2M1:
        array = RNG.integers(0, 16, size=size).astype(np.uint8)
    elif dtype is DType.BOOL:
        array = RNG.integers(0, 2, size=size).astype(bool)
    else:
        array = RNG.integers(0, 256, size=size * dtype.storage.itemsize, dtype=np.uint8).view(dtype.storage)
    return Tensor(dtype, shape, array=array.reshape(shape))


def test_large_constants_go_to_the_sidecar(tmp_path: Path) -> None:
    w = Tensor.from_numpy(np.arange(40, dtype=np.float32).reshape(8, 5))
    small = Tensor.from_numpy(np.arange(16, dtype=np.float32))
    g = graph_with_constants({"conv1.weight": w, "small": small})
    path = tmp_path / "model.qir"
    save(g, path)
    text = path.read_text(encoding="utf-8")
    assert "const %conv1.weight: f32[8,5] = @conv1.weight\n" in text
    assert "const %small: f32[16] = [0.0, 1.0," in text
    assert sidecar_path(path) == tmp_path / "model.safetensors"
    loaded = safetensors.numpy.load_file(str(tmp_path / "model.safetensors"))
    assert set(loaded) == {"conv1.weight"} and np.array_equal(loaded["conv1.weight"], w.numpy())
    assert first_difference(load(path), g) is None


def test_inline_limit_is_a_parameter(tmp_path: Path) -> None:
    g = graph_with_constants({"c": Tensor.from_numpy(np.arange(4, dtype=np.int64))})
    assert "= @c" in print_graph(g, inline_limit=3)
    assert "= [0, 1, 2, 3]" in print_graph(g, inline_limit=4)
    save(g, tmp_path / "g.qir")
    assert not (tmp_path / "g.safetensors").exists()


@pytest.mark.parametrize(
    "dtype", [d for d in DType if d is not DType.STRING], ids=[d.value for d in DType if d is not DType.STRING]
)
def test_sidecar_round_trips_every_dtype_bit_exactly(tmp_path: Path, dtype: DType) -> None:
    t = random_tensor(dtype, (3, 11))  # an odd element count exercises 4-bit packing
    g = graph_with_constants({"t": t})
    save(g, tmp_path / "g.qir")
    back = load(tmp_path / "g.qir").constants["t"].const
    assert back is not None and back.dtype is dtype and back.shape == (3, 11)
    assert back.numpy().tobytes() == t.numpy().tobytes()


def test_loading_is_lazy(tmp_path: Path) -> None:
    g = graph_with_constants({"w": Tensor.from_numpy(np.ones((64, 64), np.float32))})
    save(g, tmp_path / "g.qir")
    w = load(tmp_path / "g.qir").constants["w"].const
    assert w is not None and not w.is_loaded
    assert isinstance(w.external, ExternalData)
    assert w.external.path == os.path.abspath(tmp_path / "g.safetensors") and w.external.length == 64 * 64 * 4
    assert np.array_equal(w.numpy(), np.ones((64, 64), np.float32))


def test_sidecar_is_readable_by_the_safetensors_package(tmp_path: Path) -> None:
    tensors = {
        d.value: random_tensor(d, (20,))
        for d in (DType.F32, DType.BF16, DType.F8E4M3FN, DType.F8E5M2, DType.I8, DType.U4, DType.F16, DType.BOOL)
    }
    save(graph_with_constants(tensors), tmp_path / "g.qir")
    side = str(tmp_path / "g.safetensors")
    with safe_open(side, "np") as f:
        assert set(f.keys()) == set(tensors)
        assert "quantir.tensors" in f.metadata()
    as_torch = safetensors.torch.load_file(side)
    assert as_torch["bf16"].dtype == torch.bfloat16
    assert as_torch["bf16"].view(torch.uint16).numpy().tobytes() == tensors["bf16"].numpy().tobytes()
    assert as_torch["f8e4m3fn"].dtype == torch.float8_e4m3fn
    assert as_torch["f8e4m3fn"].view(torch.uint8).numpy().tobytes() == tensors["f8e4m3fn"].numpy().tobytes()
    assert as_torch["f32"].numpy().tobytes() == tensors["f32"].numpy().tobytes()
    assert as_torch["u4"].dtype == torch.uint8 and as_torch["u4"].shape == (10,)  # packed two per byte


def test_reads_safetensors_written_by_the_safetensors_package(tmp_path: Path) -> None:
    arrays: dict[str, np.ndarray] = {"a": np.arange(6, dtype=np.int16).reshape(2, 3), "b": np.array([1.5])}
    safetensors.numpy.save_file(arrays, str(tmp_path / "x.safetensors"))
    got = read_safetensors(tmp_path / "x.safetensors")
    assert got["a"].dtype is DType.I16 and np.array_equal(got["a"].numpy(), arrays["a"])
    assert got["b"].dtype is DType.F64 and np.array_equal(got["b"].numpy(), arrays["b"])


def test_string_constants_stay_inline_and_cannot_enter_the_sidecar(tmp_path: Path) -> None:
    words = np.array([f"w{i}" for i in range(30)], dtype=object)
    g = graph_with_constants({"words": Tensor(DType.STRING, (30,), array=words)})
    assert '= ["w0", "w1",' in print_graph(g)
    save(g, tmp_path / "g.qir")
    assert not (tmp_path / "g.safetensors").exists()
    with pytest.raises(SerializationError, match="holds strings, which safetensors cannot store"):
        write_safetensors(tmp_path / "s.safetensors", {"words": Tensor(DType.STRING, (30,), array=words)})


def test_writing_streams_without_materializing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tmp_path / "raw.bin"
    data = np.arange(1000, dtype=np.float32)
    raw.write_bytes(b"\0" * 8 + data.tobytes())
    big = Tensor(DType.F32, (1000,), external=ExternalData(str(raw), 8, data.nbytes))
    g = graph_with_constants({"big": big})

    def refuse(self: Tensor) -> np.ndarray:
        raise AssertionError("save() must stream sidecar tensors, not materialize them")

    monkeypatch.setattr(Tensor, "numpy", refuse)
    save(g, tmp_path / "g.qir")
    monkeypatch.undo()
    assert np.array_equal(safetensors.numpy.load_file(str(tmp_path / "g.safetensors"))["big"], data)


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    g = graph_with_constants({"w": Tensor.from_numpy(np.ones(32, np.float32))})
    save(g, tmp_path / "g.qir")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    broken = Tensor(DType.F32, (32,), external=ExternalData(str(tmp_path / "missing.bin"), 0, 128))
    with pytest.raises(SerializationError):
        save(graph_with_constants({"w": broken}), tmp_path / "g.qir")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_saving_over_the_sidecar_a_graph_was_loaded_from(tmp_path: Path) -> None:
    a, b = np.arange(20, dtype=np.float32), np.arange(30, dtype=np.int32)
    save(
        graph_with_constants({"a": Tensor.from_numpy(a), "b": Tensor.from_numpy(b)}), tmp_path / "g.qir", inline_limit=4
    )
    g = load(tmp_path / "g.qir")
    g.add_constant("new", Tensor.from_numpy(np.full(50, 7, np.int8)))
    g.outputs = list(g.constants.values())
    save(g, tmp_path / "g.qir", inline_limit=25)  # %a is now inline, %b and %new in the rewritten sidecar
    ca, cb = g.constants["a"].const, g.constants["b"].const
    assert ca is not None and cb is not None
    assert np.array_equal(ca.numpy(), a) and np.array_equal(cb.numpy(), b)
    assert first_difference(load(tmp_path / "g.qir"), g) is None


def test_large_tensor_attributes_go_to_the_sidecar(tmp_path: Path) -> None:
    value = Tensor.from_numpy(np.arange(20, dtype=np.float32))
    g = single_node_graph({"value": Attr(AttrKind.TENSOR, value)})
    g.nodes[0].name = "k"
    text, side = print_graph_with_tensors(g)
    assert "{value=f32[20] @k.value}" in text and set(side) == {"k.value"}
    save(g, tmp_path / "g.qir")
    assert first_difference(load(tmp_path / "g.qir"), g) is None


def test_sidecar_names_do_not_collide_with_constants() -> None:
    g = single_node_graph({"value": Attr(AttrKind.TENSOR, Tensor.from_numpy(np.zeros(20, np.float32)))})
    g.nodes[0].name = "k"
    g.add_constant("k.value", Tensor.from_numpy(np.ones(20, np.float32)))
    text, side = print_graph_with_tensors(g)
    assert '@"k.value~1"}' in text and set(side) == {"k.value", "k.value~1"}
    assert first_difference(parse(text, tensors=side), g) is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x01", "is not a safetensors file"),
        ((1 << 40).to_bytes(8, "little"), "header length"),
        ((4).to_bytes(8, "little") + b"[1] ", "not a JSON object"),
        (b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}', "outside"),
        (b'{"a": {"dtype": "Q9", "shape": [], "data_offsets": [0, 0]}}', "dtype Q9"),
        (b'{"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 4]}}', "has 4 bytes"),
        (b'{"a": {"dtype": "F32"}}', "malformed"),
        (b'{"__metadata__": {"quantir.tensors": "{"}}', "bad quantir.tensors metadata"),
    ],
)
def test_corrupt_sidecars_are_reported(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.safetensors"
    if content.startswith(b"{"):  # a header: give it its length prefix and a small buffer
        content = len(content).to_bytes(8, "little") + content + b"\0" * 4
    path.write_bytes(content)
    with pytest.raises(SerializationError, match=message):
        read_safetensors(path)
