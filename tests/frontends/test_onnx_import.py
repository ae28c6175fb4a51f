"""The ONNX frontend on small hand-built models: provenance, lazy external data, refusals, folding, dtypes."""

from __future__ import annotations

import os
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantir.backends.onnx_proto import emit_model
from quantir.frontends.onnx import import_onnx
from quantir.ir import (
    DType,
    FrontendError,
    OptionalType,
    SequenceType,
    SourceInfo,
    Tensor,
    TensorType,
    UnsupportedOpError,
)

F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, inits=(), opset=17, ir_version=None, extra_opsets=(), **graph_kw) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits), **graph_kw)
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
    m = helper.make_model(g, opset_imports=opsets)
    if ir_version is not None:
        m.ir_version = ir_version
    return m


def _vi(name: str, shape, elem=F) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(sess.run(None, feeds))


def _node(g, op: str):
    return next(n for n in g if n.op_type == op)


# ---------------------------------------------------------------- provenance


def _with_meta(node: onnx.NodeProto, **props: str) -> onnx.NodeProto:
    for k, v in props.items():
        node.metadata_props.add(key=k.replace("__", "."), value=v)
    return node


def test_provenance_from_torch_metadata_props() -> None:
    conv = _with_meta(
        helper.make_node("Relu", ["x"], ["a"], name="node_relu"),
        pkg__torch__onnx__name_scopes="['', 'conv1']",
        pkg__torch__onnx__class_hierarchy="['__main__.Net', 'torch.nn.modules.conv.Conv2d']",
    )
    # What torch.onnx (dynamo) really writes: full paths plus a trailing FX-node entry, marked by fx_node.
    fx = _with_meta(
        helper.make_node("Neg", ["a"], ["b"], name="node_neg"),
        pkg__torch__onnx__name_scopes="['', 'layer1', 'layer1.0', 'layer1.0.conv1', 'neg']",
        pkg__torch__onnx__class_hierarchy="['__main__.Net', 'torch.nn.modules.container.Sequential', "
        "'__main__.Block', 'torch.nn.modules.conv.Conv2d', 'aten.neg.default']",
        pkg__torch__onnx__fx_node="%neg : ...",
    )
    rel = _with_meta(
        helper.make_node("Abs", ["b"], ["c"], name="abs"),
        pkg__torch__onnx__name_scopes="['', 'layer1', '0']",
        pkg__torch__onnx__class_hierarchy="['M', 'torch.nn.Sequential', 'M.Block']",
    )
    root = _with_meta(
        helper.make_node("Sigmoid", ["c"], ["y"], name="node_add"),
        pkg__torch__onnx__name_scopes="['', 'add']",
        pkg__torch__onnx__class_hierarchy="['__main__.Net', 'aten.add.Tensor']",
    )
    g = import_onnx(_model([conv, fx, rel, root], [_vi("x", [2])], [_vi("y", [2])]))
    assert [n.name for n in g] == ["node_relu", "node_neg", "abs", "node_add"]
    assert [n.source for n in g] == [
        SourceInfo("conv1", "torch.nn.modules.conv.Conv2d"),
        SourceInfo("layer1.0.conv1", "torch.nn.modules.conv.Conv2d"),
        SourceInfo("layer1.0", "M.Block"),
        SourceInfo("", "__main__.Net"),
    ]
    # Emission writes provenance back; importing the emitted model recovers it.
    again = import_onnx(emit_model(g))
    assert [n.source for n in again] == [n.source for n in g]


def test_provenance_and_parameter_names_from_a_real_torch_export(tmp_path: Path) -> None:
    import onnxscript  # noqa: F401
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer1 = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self.fc(self.layer1(x).mean((2, 3)))

    net = Net().eval()
    x = torch.randn(1, 3, 8, 8)
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (x,), os.fspath(path), dynamo=True, optimize=False, verbose=False)
    g = import_onnx(path)
    assert {"layer1.0.weight", "fc.weight", "fc.bias"} <= set(g.constants)
    assert _node(g, "Conv").source == SourceInfo("layer1.0", "torch.nn.modules.conv.Conv2d")
    assert _node(g, "Relu").source == SourceInfo("layer1.1", "torch.nn.modules.activation.ReLU")
    assert _node(g, "Gemm").source == SourceInfo("fc", "torch.nn.modules.linear.Linear")
    (out,) = _run(emit_model(g), {g.inputs[0].name: x.numpy()})
    np.testing.assert_allclose(out, net(x).detach().numpy(), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- external data


def _external_model(
    tmp_path: Path, location: str, shape=(4, 3), *, offset: int | None = None, length: int | None = None
) -> Path:
    w = onnx.TensorProto(name="w", data_type=F, dims=list(shape))
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value=location)
    if offset is not None:
        w.external_data.add(key="offset", value=str(offset))
    if length is not None:
        w.external_data.add(key="length", value=str(length))
    m = _model(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        [_vi("x", ["N", shape[0]])],
        [_vi("y", ["N", shape[1]])],
        [w],
    )
    path = tmp_path / "model.onnx"
    path.write_bytes(m.SerializeToString())
    return path


def test_external_data_is_lazy_and_correct(tmp_path: Path) -> None:
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    (tmp_path / "weights.bin").write_bytes(b"\0" * 64 + w.tobytes())
    g = import_onnx(_external_model(tmp_path, "weights.bin", offset=64, length=48))
    t = g.constants["w"].const
    assert t is not None and t.external is not None and not t.is_loaded
    assert t.external.offset == 64 and t.external.length == 48
    assert Path(t.external.path) == (tmp_path / "weights.bin").resolve()
    np.testing.assert_array_equal(t.numpy(), w)
    assert g.inputs[0].type == TensorType(DType.F32, ("N", 4))


def test_external_data_length_defaults_to_rest_of_file(tmp_path: Path) -> None:
    w = np.ones((4, 3), np.float32)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "w.bin").write_bytes(w.tobytes())
    t = import_onnx(_external_model(tmp_path, "sub/w.bin")).constants["w"].const
    assert t is not None and t.external is not None and t.external.length == 48


def test_external_data_imports_with_low_memory(tmp_path: Path) -> None:
    import psutil

    shape = (16384, 8192)  # 512 MiB of float32, as a sparse file: nothing is read at import
    with open(tmp_path / "big.bin", "wb") as f:
        f.truncate(shape[0] * shape[1] * 4)
    path = _external_model(tmp_path, "big.bin", shape)
    proc = psutil.Process()
    before = proc.memory_info().rss
    g = import_onnx(path)
    grown = proc.memory_info().rss - before
    t = g.constants["w"].const
    assert t is not None and not t.is_loaded and t.nbytes == 512 << 20
    assert grown < 64 << 20, f"import grew RSS by {grown >> 20} MiB"


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("../outside.bin", "escapes the model's folder with '..'"),
        ("sub/../../outside.bin", "escapes the model's folder with '..'"),
        ("/etc/passwd", "an absolute location could read any file"),
    ],
)
def test_unsafe_external_locations_are_refused(tmp_path: Path, location: str, message: str) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"\0" * 48)
    with pytest.raises(FrontendError) as e:
        import_onnx(_external_model(model_dir, location))
    assert f"external data of initializer 'w' (location {location!r}) is refused" in str(e.value)
    assert message in str(e.value)


def test_symlink_escaping_the_model_folder_is_refused(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 48)
    (model_dir / "link.bin").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(FrontendError, match=r"location 'link.bin'\) is refused: it resolves to .*outside"):
        import_onnx(_external_model(model_dir, "link.bin"))


def test_missing_or_short_external_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FrontendError, match=r"external data file 'nope.bin' of initializer 'w' not found"):
        import_onnx(_external_model(tmp_path, "nope.bin"))
    (tmp_path / "short.bin").write_bytes(b"\0" * 40)
    with pytest.raises(FrontendError, match=r"initializer 'w'.* holds 40 bytes .* needs 48"):
        import_onnx(_external_model(tmp_path, "short.bin"))


def test_model_proto_with_external_data_needs_base_dir(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(np.ones((4, 3), np.float32).tobytes())
    proto = onnx.load(os.fspath(_external_model(tmp_path, "w.bin")), load_external_data=False)
    with pytest.raises(FrontendError, match="pass import_onnx\\(model, base_dir="):
        import_onnx(proto)
    t = import_onnx(proto, base_dir=tmp_path).constants["w"].const
    assert t is not None and np.array_equal(t.numpy(), np.ones((4, 3), np.float32))


# ---------------------------------------------------------------- refusals and errors


def test_if_node_is_refused_with_a_clear_message() -> None:
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["o"])], "b", [], [_vi("o", [2])])
    node = helper.make_node("If", ["c"], ["y"], name="my_if", then_branch=branch, else_branch=branch)
    m = _model([node], [_vi("c", [], TensorProto.BOOL), _vi("x", [2])], [_vi("y", [2])])
    with pytest.raises(UnsupportedOpError) as e:
        import_onnx(m)
    assert str(e.value) == (
        "If node 'my_if': attribute 'else_branch' holds a subgraph; "
        "control-flow subgraphs (If/Loop/Scan bodies) are not supported yet"
    )


def test_sparse_and_type_attributes_are_refused() -> None:
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([1.0], np.float32), "v"),
        numpy_helper.from_array(np.array([0], np.int64), "i"),
        [2],
    )
    node = helper.make_node("Constant", [], ["y"], name="sp", sparse_value=sparse)
    with pytest.raises(UnsupportedOpError, match="Constant node 'sp': attribute 'sparse_value' holds a sparse tensor"):
        import_onnx(_model([node], [], [_vi("y", [2])]))


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"\xff\xfe not a protobuf", "cannot parse ONNX model"), (None, "does not exist")],
)
def test_unreadable_model_files(tmp_path: Path, data: bytes | None, message: str) -> None:
    path = tmp_path / "bad.onnx"
    if data is not None:
        path.write_bytes(data)
    with pytest.raises(FrontendError, match=message):
        import_onnx(path)


def test_undefined_input_names_the_node() -> None:
    m = _model([helper.make_node("Relu", ["ghost"], ["y"], name="r")], [_vi("x", [2])], [_vi("y", [2])])
    with pytest.raises(FrontendError, match=r"Relu node 'r': input 0 'ghost' is not defined before the node"):
        import_onnx(m)


def test_map_typed_graph_input_is_refused() -> None:
    vi = helper.make_value_info(
        "m", helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(F, []))
    )
    m = _model([helper.make_node("Identity", ["m"], ["y"])], [vi], [vi])
    with pytest.raises(UnsupportedOpError, match="graph input 'm' has map type"):
        import_onnx(m)


# ---------------------------------------------------------------- folding


def test_constant_forms_fold_to_constants() -> None:
    nodes = [
        helper.make_node("Constant", [], ["c_tensor"], value=numpy_helper.from_array(np.ones((2, 2), np.float32))),
        helper.make_node("Constant", [], ["c_float"], value_float=2.5),
        helper.make_node("Constant", [], ["c_floats"], value_floats=[1.0, 2.0]),
        helper.make_node("Constant", [], ["c_int"], value_int=3),
        helper.make_node("Constant", [], ["c_ints"], value_ints=[2, 2]),
        helper.make_node("Constant", [], ["c_str"], value_string="hi"),
        helper.make_node("Constant", [], ["c_strs"], value_strings=["a", "bc"]),
        helper.make_node("Reshape", ["c_tensor", "c_ints"], ["t"]),
        helper.make_node("Mul", ["t", "c_float"], ["t2"]),
        helper.make_node("Add", ["t2", "c_floats"], ["t3"]),
        helper.make_node("Identity", ["c_str"], ["s1"]),
        helper.make_node("Identity", ["c_strs"], ["s2"]),
        helper.make_node("Cast", ["c_int"], ["i"], to=F),
        helper.make_node("Add", ["t3", "i"], ["y"]),
    ]
    m = _model(nodes, [], [_vi("y", [2, 2]), _vi("s1", [], TensorProto.STRING), _vi("s2", [2], TensorProto.STRING)])
    g = import_onnx(m)
    assert [n.op_type for n in g] == ["Reshape", "Mul", "Add", "Identity", "Identity", "Cast", "Add"]
    c = {k: v.const.numpy() for k, v in g.constants.items() if v.const is not None}
    assert c["c_float"].dtype == np.float32 and c["c_float"].shape == () and c["c_float"] == 2.5
    assert c["c_floats"].tolist() == [1.0, 2.0] and c["c_int"].dtype == np.int64 and c["c_ints"].tolist() == [2, 2]
    assert c["c_str"].shape == () and c["c_str"].item() == "hi" and c["c_strs"].tolist() == ["a", "bc"]
    assert g.constants["c_strs"].type == TensorType(DType.STRING, (2,))
    y, s1, s2 = _run(emit_model(g), {})
    np.testing.assert_array_equal(y, np.array([[6.5, 7.5], [6.5, 7.5]], np.float32))
    assert s1.item() == "hi" and s2.tolist() == ["a", "bc"]


def test_constant_of_shape_and_identity_chains_fold() -> None:
    shape = numpy_helper.from_array(np.array([3, 2], np.int64), "w__SHAPE")
    fill = numpy_helper.from_array(np.array([0.5], np.float32))
    nodes = [
        helper.make_node("ConstantOfShape", ["w__SHAPE"], ["w_raw"], value=fill),
        helper.make_node("Identity", ["w_raw"], ["w"]),  # chain: ConstantOfShape -> Identity
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Identity", ["param"], ["param_alias"]),  # Identity of an initializer: users read `param`
        helper.make_node("Add", ["h", "param_alias"], ["y"]),
        helper.make_node("Constant", [], ["k"], value_float=1.0),
        helper.make_node("Identity", ["k"], ["k_out"]),  # a graph output keeps its node
    ]
    param = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "param")
    m = _model(nodes, [_vi("x", ["N", 3])], [_vi("y", ["N", 2]), _vi("k_out", [])], [shape, param])
    g = import_onnx(m)
    assert [n.op_type for n in g] == ["MatMul", "Add", "Identity"]
    assert set(g.constants) == {"w_raw", "param", "k"}  # the shape initializer is gone with its only user
    w = g.constants["w_raw"].const
    assert w is not None and w.shape == (3, 2) and np.all(w.numpy() == 0.5)
    assert _node(g, "MatMul").inputs[1] is g.constants["w_raw"]
    assert _node(g, "Add").inputs[1] is g.constants["param"]
    assert _node(g, "Identity").inputs[0] is g.constants["k"] and g.outputs[1].name == "k_out"
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    (y, k) = _run(emit_model(g), {"x": x})
    np.testing.assert_allclose(y, _run(m, {"x": x})[0])
    assert k == 1.0


def test_initializers_listed_as_inputs_become_constants() -> None:
    w = numpy_helper.from_array(np.ones((2,), np.float32), "w")
    m = _model(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        [_vi("x", [2]), _vi("w", [2])],
        [_vi("y", [2])],
        [w],
        opset=9,
        ir_version=3,
    )
    g = import_onnx(m)
    assert [v.name for v in g.inputs] == ["x"] and "w" in g.constants and g.ir_version == 3
    emitted = emit_model(g)
    onnx.checker.check_model(emitted, full_check=True)
    x = np.array([1.0, 2.0], np.float32)
    np.testing.assert_array_equal(_run(emitted, {"x": x})[0], x + 1)


# ---------------------------------------------------------------- opsets, domains, functions, types


@pytest.mark.parametrize("opset", [9, 13, 18, 23])
def test_opsets_import_and_run(opset: int) -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Unsqueeze", ["r"], ["u"], axes=[0])
        if opset < 13
        else helper.make_node("Unsqueeze", ["r", "axes"], ["u"]),
        helper.make_node("Softmax", ["u"], ["y"], axis=-1),
    ]
    inits = [] if opset < 13 else [numpy_helper.from_array(np.array([0], np.int64), "axes")]
    m = _model(nodes, [_vi("x", ["B", 4])], [_vi("y", [1, "B", 4])], inits, opset=opset)
    g = import_onnx(m)
    assert g.opset_imports == {"": opset} and g.ir_version == m.ir_version
    assert _node(g, "Relu").output().type == TensorType(DType.F32, ("B", 4))
    emitted = emit_model(g)
    onnx.checker.check_model(emitted, full_check=True)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(emitted, {"x": x})[0], _run(m, {"x": x})[0], rtol=1e-6)


def test_com_microsoft_op_passes_through_and_runs() -> None:
    m = _model(
        [helper.make_node("Gelu", ["x"], ["y"], name="gelu", domain="com.microsoft")],
        [_vi("x", [2, 3])],
        [_vi("y", [2, 3])],
        extra_opsets=[("com.microsoft", 1)],
    )
    g = import_onnx(m)
    (node,) = g.nodes
    assert (node.domain, node.op_type, node.name) == ("com.microsoft", "Gelu", "gelu")
    assert g.opset_imports == {"": 17, "com.microsoft": 1}
    x = np.linspace(-2, 2, 6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(_run(emit_model(g), {"x": x})[0], _run(m, {"x": x})[0], rtol=1e-6)


def test_local_functions_are_inlined() -> None:
    fn = helper.make_function(
        "local", "Double", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])], [helper.make_opsetid("", 17)]
    )
    m = _model(
        [helper.make_node("Double", ["x"], ["y"], domain="local")],
        [_vi("x", [2])],
        [_vi("y", [2])],
        extra_opsets=[("local", 1)],
    )
    m.functions.append(fn)
    g = import_onnx(m)
    assert [(n.domain, n.op_type) for n in g] == [("", "Add")]


def test_value_types_symbolic_unknown_sequence_and_optional() -> None:
    nodes = [
        helper.make_node("SequenceConstruct", ["x", "x"], ["seq"]),
        helper.make_node("Optional", ["x"], ["opt"]),
        helper.make_node("Shape", ["x"], ["shp"]),
    ]
    x = helper.make_tensor_value_info("x", F, ["N", None])
    seq = helper.make_value_info("seq", helper.make_sequence_type_proto(helper.make_tensor_type_proto(F, None)))
    opt = helper.make_value_info("opt", helper.make_optional_type_proto(helper.make_tensor_type_proto(F, None)))
    g = import_onnx(_model(nodes, [x], [seq, opt, _vi("shp", [2], TensorProto.INT64)], opset=18))
    assert g.inputs[0].type == TensorType(DType.F32, ("N", None))
    assert isinstance(g.outputs[0].type, SequenceType) and isinstance(g.outputs[1].type, OptionalType)
    assert g.outputs[2].type == TensorType(DType.I64, (2,))
    emitted = emit_model(g)
    onnx.checker.check_model(emitted, full_check=True)
    out = _run(emitted, {"x": np.ones((2, 5), np.float32)})
    assert len(out[0]) == 2 and out[2].tolist() == [2, 5]


# ---------------------------------------------------------------- dtypes


def _dtype_cases() -> list[tuple[str, np.ndarray, DType]]:
    vals = np.array([0.0, 1.5, -2.0, 448.0, -0.25, 3.0], np.float32)
    return [
        ("bf16", vals.astype(ml_dtypes.bfloat16), DType.BF16),
        ("f8e4m3fn", vals.astype(ml_dtypes.float8_e4m3fn), DType.F8E4M3FN),
        ("f8e5m2", vals.astype(ml_dtypes.float8_e5m2), DType.F8E5M2),
        ("i4", np.array([-8, 7, 1, -1, 3], ml_dtypes.int4), DType.I4),
        ("u4", np.array([0, 15, 1, 9, 3], ml_dtypes.uint4), DType.U4),
        ("f4e2m1", np.array([0.5, -6.0, 1.5], ml_dtypes.float4_e2m1fn), DType.F4E2M1),
        ("f16", vals.astype(np.float16), DType.F16),
        ("i8", np.array([-128, 5, 127], np.int8), DType.I8),
        ("u16", np.array([0, 65535], np.uint16), DType.U16),
        ("bool", np.array([True, False, True]), DType.BOOL),
        ("c64", np.array([1 + 2j, -3j], np.complex64), DType.C64),
        ("f64", np.array([1e300, -2.5]), DType.F64),
        ("u32", np.array([1, 2**32 - 1], np.uint32), DType.U32),
        ("u64", np.array([1, 2**64 - 1], np.uint64), DType.U64),
        ("i64", np.array([-(2**63), 5], np.int64), DType.I64),
    ]


def _expected_storage(ref: np.ndarray, dtype: DType) -> np.ndarray:
    if dtype in (DType.I4, DType.U4):
        return ref.astype(dtype.storage)
    if dtype is DType.F4E2M1:  # the 4-bit code, one per byte
        return ref.view(np.uint8) & 0x0F
    return ref.view(dtype.storage) if ref.dtype.itemsize == dtype.storage.itemsize else ref.astype(dtype.storage)


@pytest.mark.parametrize("raw", [True, False], ids=["raw_data", "typed_fields"])
@pytest.mark.parametrize(("label", "array", "dtype"), _dtype_cases(), ids=[c[0] for c in _dtype_cases()])
def test_initializer_dtypes_decode_to_storage(label: str, array: np.ndarray, dtype: DType, raw: bool) -> None:
    proto = numpy_helper.from_array(array, "t")
    if not raw:  # re-encode through the typed fields (int32_data for bf16/fp8/int4, uint64_data, ...)
        proto = helper.make_tensor(
            "t",
            proto.data_type,
            list(proto.dims),
            numpy_helper.to_array(proto).reshape(-1) if dtype not in (DType.I4, DType.U4) else array.astype(np.int32),
            raw=False,
        )
        assert not proto.HasField("raw_data")
    ref = numpy_helper.to_array(proto)
    m = _model(
        [helper.make_node("Identity", ["t"], ["y"])],
        [],
        [helper.make_tensor_value_info("y", proto.data_type, list(proto.dims))],
        [proto],
        opset=21,
    )
    t = import_onnx(m).constants["t"].const
    assert isinstance(t, Tensor) and t.dtype is dtype and t.shape == ref.shape
    got = t.numpy()
    assert got.dtype == dtype.storage
    np.testing.assert_array_equal(got, _expected_storage(ref, dtype))
    again = emit_model(import_onnx(m)).graph.initializer[0]
    np.testing.assert_array_equal(numpy_helper.to_array(again).view(np.uint8), ref.view(np.uint8))


# ---------------------------------------------------------------- every other user-facing error


def _one_node(node: onnx.NodeProto, inits=(), **kw) -> onnx.ModelProto:
    """`node` (reading x, writing y) followed by a Relu, so that even foldable nodes are not graph outputs."""
    return _model([node, helper.make_node("Relu", ["y"], ["z"])], [_vi("x", [2])], [_vi("z", None)], inits, **kw)


def _bad_raw() -> onnx.TensorProto:
    t = numpy_helper.from_array(np.ones(4, np.float32), "w")
    t.raw_data = t.raw_data[:10]
    return t


def _segmented() -> onnx.TensorProto:
    t = numpy_helper.from_array(np.ones(2, np.float32), "w")
    t.segment.begin, t.segment.end = 0, 2
    return t


def _ref_attr() -> onnx.NodeProto:
    n = helper.make_node("LeakyRelu", ["x"], ["y"], name="lr")
    n.attribute.add(name="alpha", type=onnx.AttributeProto.FLOAT, ref_attr_name="a")
    return n


def _bad_utf8() -> onnx.NodeProto:
    n = helper.make_node("Cast", ["x"], ["y"], name="c", to=F)
    n.attribute.add(name="note", type=onnx.AttributeProto.STRING, s=b"\xff\xfe")
    return n


ERROR_CASES = {
    "unsupported dtype": (
        _one_node(helper.make_node("Identity", ["w"], ["y"]), [helper.make_tensor("w", TensorProto.INT2, [2], [1, 0])]),
        UnsupportedOpError,
        r"initializer 'w' has element type INT2, which quantir does not represent",
    ),
    "raw size mismatch": (
        _one_node(helper.make_node("Add", ["x", "w"], ["y"]), [_bad_raw()]),
        FrontendError,
        r"initializer 'w': cannot decode its f32\[4\] data: raw_data has 10 bytes, expected 16",
    ),
    "segmented tensor": (
        _one_node(helper.make_node("Add", ["x", "w"], ["y"]), [_segmented()]),
        UnsupportedOpError,
        r"initializer 'w' is a segmented tensor",
    ),
    "function attribute reference": (
        _one_node(_ref_attr()),
        UnsupportedOpError,
        r"LeakyRelu node 'lr': attribute 'alpha' refers to function attribute 'a'",
    ),
    "non-UTF-8 string attribute": (
        _one_node(_bad_utf8()),
        UnsupportedOpError,
        r"Cast node 'c': attribute 'note' is not valid UTF-8 text",
    ),
    "domain not imported": (
        _one_node(helper.make_node("Gelu", ["x"], ["y"], name="g", domain="com.microsoft")),
        FrontendError,
        r"com.microsoft::Gelu node 'g' uses domain 'com.microsoft', which the model does not import",
    ),
    "duplicate value": (
        _model([helper.make_node("Relu", ["x"], ["x"], name="r")], [_vi("x", [2])], [_vi("x", [2])]),
        FrontendError,
        r"value name 'x' is defined twice \(again as output 0 of Relu node 'r'\)",
    ),
    "undefined graph output": (
        _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [2])], [_vi("z", [2])]),
        FrontendError,
        r"graph output 'z' is not produced by any node, input or initializer",
    ),
    "sparse initializer": (
        _model(
            [helper.make_node("Relu", ["x"], ["y"])],
            [_vi("x", [2])],
            [_vi("y", [2])],
            sparse_initializer=[
                helper.make_sparse_tensor(
                    numpy_helper.from_array(np.array([1.0], np.float32), "s"),
                    numpy_helper.from_array(np.array([0], np.int64), "si"),
                    [2],
                )
            ],
        ),
        UnsupportedOpError,
        r"sparse initializers \['s'\] are not supported yet",
    ),
    "Constant without value": (
        _one_node(helper.make_node("Constant", [], ["y"], name="k")),
        FrontendError,
        r"Constant node 'k' must have exactly one value attribute, found none",
    ),
    "ConstantOfShape negative shape": (
        _one_node(
            helper.make_node("ConstantOfShape", ["s"], ["y"], name="cos"),
            [numpy_helper.from_array(np.array([2, -1], np.int64), "s")],
        ),
        FrontendError,
        r"ConstantOfShape node 'cos': shape input %s must hold non-negative integers, found \[2, -1\]",
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error_messages(case: str) -> None:
    model, kind, message = ERROR_CASES[case]
    with pytest.raises(kind, match=message):
        import_onnx(model)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"offset": "40"}, r"external data 'w.bin' holds 8 bytes at offset 40; a f32\[4, 3\] tensor needs 48"),
        ({"offset": "100"}, r"external data 'w.bin' offset 100 is past the end of the file \(48 bytes\)"),
        ({"offset": "8", "length": "48"}, r"at offset 8 with length 48 runs past the end of the file \(48 bytes\)"),
        ({"offset": "abc"}, r"initializer 'w': external_data offset 'abc' is not an integer"),
        ({"length": "-4"}, r"initializer 'w': external_data length -4 is negative"),
        ({"location": ""}, r"external data of initializer 'w' \(location ''\): the location is empty"),
    ],
)
def test_bad_external_data_entries(tmp_path: Path, entries: dict[str, str], message: str) -> None:
    (tmp_path / "w.bin").write_bytes(b"\0" * 48)
    path = _external_model(tmp_path, "w.bin")
    m = onnx.load(os.fspath(path), load_external_data=False)
    ext = m.graph.initializer[0].external_data
    current = {e.key: e.value for e in ext}
    current.update(entries)
    del ext[:]
    for k, v in current.items():
        ext.add(key=k, value=v)
    with pytest.raises(FrontendError, match=message):
        import_onnx(m, base_dir=tmp_path)


def test_exporter_placeholder_scope_is_not_provenance() -> None:
    from quantir.tools.digits import bundled_model_path

    graph = import_onnx(bundled_model_path())
    by_op = {n.op_type: n.source for n in graph.nodes}
    assert by_op["Shape"] is None  # the exporter's '_empty_nn_module_stack_from_metadata_hook'
    convs = [n.source for n in graph.nodes if n.op_type == "Conv"]
    assert [s.module for s in convs if s] == ["conv1", "conv2"]


def test_exporter_shape_arithmetic_is_typed_without_onnx_shape_inference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only Shape/Concat outputs untyped (the torch exporter's flatten): typed locally, as ONNX inference would."""
    x, w = _vi("x", ["N", 2, 3]), numpy_helper.from_array(np.ones((6, 4), np.float32), "w")
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], start=0, end=1),
        helper.make_node("Constant", [], ["six"], value_ints=[6]),
        helper.make_node("Concat", ["s", "six"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["y"]),
    ]
    model = _model(nodes, [x], [_vi("y", ["N", 4])], [w], value_info=[_vi("flat", ["N", 6])])
    inferred = {vi.name: vi for vi in onnx.shape_inference.infer_shapes(model).graph.value_info}
    assert inferred["s"].type.tensor_type.shape.dim[0].dim_value == 1  # what ONNX's own inference gives

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("ONNX shape inference was run on a model the exporter typed")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", refuse)
    g = import_onnx(model)
    types = {v.name: v.type for v in g.values()}
    assert types["s"] == TensorType(DType.I64, (1,))
    assert types["target"] == TensorType(DType.I64, (2,))  # Shape gives int64[1], the Constant(value_ints) int64[1]
    assert types["flat"] == TensorType(DType.F32, ("N", 6))


def test_untyped_intermediate_values_still_get_onnx_shape_inference() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["y"])]
    g = import_onnx(_model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 3])]))
    assert {v.name: v.type for v in g.values()}["r"] == TensorType(DType.F32, (2, 3))
