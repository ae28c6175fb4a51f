"""Raising QuantizeLinear/DequantizeLinear into quant types (frontends/onnx/qdq_import.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantir.frontends.onnx import import_onnx
from quantir.frontends.onnx.qdq_import import QDQParameterError
from quantir.ir import DType, GranularityKind, QuantType, UnsupportedOpError, verify
from quantir.ir.quant_math import quantize
from quantir.tools.dev.ort_baseline import ort_quantize_digits
from quantir.tools.digits import bundled_model_path, load_digits_split

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@pytest.fixture(scope="module")
def ort_models(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    d = tmp_path_factory.mktemp("ortqdq")
    return {pc: Path(ort_quantize_digits(d / f"ort_pc{int(pc)}.onnx", per_channel=pc)) for pc in (True, False)}


def _run(path: Path | str, x: np.ndarray, *, optimize: bool = True) -> np.ndarray:
    """ORT's output; `optimize=False` runs the Q/DQ ops as written (the fake-quant reference semantics)."""
    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0])


@pytest.mark.parametrize("per_channel", [True, False])
def test_ort_model_raised_with_weights_stored_exactly(ort_models: dict[bool, Path], per_channel: bool) -> None:
    path = ort_models[per_channel]
    proto = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    g = import_onnx(path)
    verify(g)
    assert not [n for n in g.nodes if n.op_type in QDQ_OPS]
    w = g.constants["conv2.weight"]
    assert isinstance(w.quant, QuantType) and w.quant.dtype is DType.I8
    kind = GranularityKind.PER_CHANNEL if per_channel else GranularityKind.PER_TENSOR
    assert w.quant.granularity.kind is kind
    # the float payload is dequantize(q): re-quantizing gives back exactly the source's integers
    for name in ("conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight", "conv2.bias", "fc2.bias"):
        c = g.constants[name]
        assert isinstance(c.quant, QuantType)
        assert np.array_equal(quantize(c.const.numpy(), c.quant), inits[f"{name}_quantized"]), name
    b = g.constants["fc2.bias"]
    assert isinstance(b.quant, QuantType) and b.quant.dtype is DType.I32
    x = g.inputs[0]
    assert isinstance(x.quant, QuantType) and x.quant.dtype is DType.U8
    assert [o.name for o in g.outputs] == ["logits"] and isinstance(g.outputs[0].quant, QuantType)


@pytest.mark.parametrize("per_channel", [True, False])
def test_reemitted_qdq_model_is_bit_exact(ort_models: dict[bool, Path], per_channel: bool, tmp_path: Path) -> None:
    from quantir.compiler.retarget import from_quantized

    path = ort_models[per_channel]
    model = from_quantized(import_onnx(path))
    out = model.save(tmp_path / "art", backend="onnx_qdq")
    x = load_digits_split().test_x
    assert np.array_equal(_run(path, x), _run(out / "model.onnx", x))  # bit-exact, 597 held-out images
    assert all(d.reason in ("quantized by the source model", "float in the source model") or not d.quantized
               for d in model.decisions("onnx_qdq"))  # fmt: skip


# ---- synthetic patterns --------------------------------------------------------------------------------------------


def _model(nodes: list[onnx.NodeProto], inits: list[TensorProto], *, opset: int = 21,
           shape: tuple[int, ...] = (2, 4), outputs: tuple[str, ...] = ("y",)) -> onnx.ModelProto:  # fmt: skip
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    ys = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    graph = helper.make_graph(nodes, "g", [x], ys, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    for out in model.graph.output:  # give outputs their inferred shapes
        if out.name in inferred:
            out.CopyFrom(inferred[out.name])
    return model


def _t(name: str, arr: np.ndarray, dt: int | None = None) -> TensorProto:
    if dt is None:
        return numpy_helper.from_array(arr, name)
    return helper.make_tensor(name, dt, arr.shape, arr.reshape(-1).tolist())


def _qdq(x: str, y: str, s: str, z: str, **attrs: int) -> list[onnx.NodeProto]:
    return [helper.make_node("QuantizeLinear", [x, s, z], [f"{y}_q"], name=f"{y}_Q", **attrs),
            helper.make_node("DequantizeLinear", [f"{y}_q", s, z], [y], name=f"{y}_DQ", **attrs)]  # fmt: skip


def _check_same_as_ort(proto: onnx.ModelProto, tmp_path: Path, x: np.ndarray) -> None:
    """The raised IR, lowered back to Q/DQ as it is (no backend legalization), computes what the source does."""
    from quantir.backends.onnx_proto.qdq import lower_to_qdq
    from quantir.compiler.model_io import export_onnx

    src = tmp_path / "src.onnx"
    onnx.save(proto, str(src))
    g = import_onnx(src)
    assert not [n for n in g.nodes if n.op_type in QDQ_OPS]
    export_onnx(lower_to_qdq(g, guard_float_weights=False), tmp_path / "lowered.onnx")
    ref, got = _run(src, x, optimize=False), _run(tmp_path / "lowered.onnx", x, optimize=False)
    assert np.array_equal(ref, got), float(np.max(np.abs(ref - got)))


def test_per_axis_weight_and_shared_q(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    wq = rng.integers(-127, 128, (3, 4)).astype(np.int8)
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0, name="w_DQ"),
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="x_Q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd1"], name="x_DQ1"),
        helper.make_node("DequantizeLinear", ["xq", "s2", "z2"], ["xd2"], name="x_DQ2"),  # equal values, own tensors
        helper.make_node("Add", ["xd1", "xd2"], ["a"]),
        helper.make_node("Gemm", ["a", "w"], ["y"], transB=1),
    ]
    s, z = np.array(0.02, np.float32), np.array(3, np.uint8)
    inits = [_t("wq", wq), _t("ws", rng.uniform(0.01, 0.1, 3).astype(np.float32)), _t("wz", np.zeros(3, np.int8)),
             _t("s", s), _t("z", z), _t("s2", s.copy()), _t("z2", z.copy())]  # fmt: skip
    proto = _model(nodes, inits, opset=13)
    g = import_onnx(proto)
    w = g.constants["w"]
    assert isinstance(w.quant, QuantType) and w.quant.granularity.kind is GranularityKind.PER_CHANNEL
    assert g.inputs[0].quant is not None
    _check_same_as_ort(proto, tmp_path, rng.uniform(-1, 1, (2, 4)).astype(np.float32))


def test_blocked_int4_weight(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    wq = rng.integers(-8, 8, (8, 4))
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=0, block_size=4, name="w_DQ"),
             helper.make_node("MatMul", ["x", "w"], ["y"])]  # fmt: skip
    inits = [_t("wq", wq, TensorProto.INT4), _t("ws", rng.uniform(0.01, 0.1, (2, 4)).astype(np.float32))]
    proto = _model(nodes, inits, shape=(2, 8))
    g = import_onnx(proto)
    q = g.constants["w"].quant
    assert isinstance(q, QuantType) and q.dtype is DType.I4 and q.granularity.kind is GranularityKind.PER_GROUP
    _check_same_as_ort(proto, tmp_path, rng.uniform(-1, 1, (2, 8)).astype(np.float32))


def test_output_and_float_reader_keep_their_meaning(tmp_path: Path) -> None:
    """x is read quantized (through Q -> DQ) and float (by Relu); the quantized y keeps its output name."""
    nodes = [*_qdq("x", "xd", "s", "z"), helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Add", ["xd", "r"], ["a"]), *_qdq("a", "y", "s", "z")]  # fmt: skip
    inits = [_t("s", np.array(0.05, np.float32)), _t("z", np.array(128, np.uint8))]
    proto = _model(nodes, inits)
    g = import_onnx(proto)
    assert [o.name for o in g.outputs] == ["y"] and isinstance(g.outputs[0].quant, QuantType)
    assert any(n.op_type == "Identity" for n in g.nodes)  # x stays float for Relu
    _check_same_as_ort(proto, tmp_path, np.random.default_rng(2).uniform(-3, 3, (2, 4)).astype(np.float32))


def test_fp8_pair(tmp_path: Path) -> None:
    nodes = [*_qdq("x", "xd", "s", "z"), helper.make_node("Relu", ["xd"], ["y"])]
    inits = [_t("s", np.array(0.01, np.float32)), _t("z", np.zeros((), np.float32), TensorProto.FLOAT8E4M3FN)]
    proto = _model(nodes, inits, opset=19)
    g = import_onnx(proto)
    assert isinstance(g.inputs[0].quant, QuantType) and g.inputs[0].quant.dtype is DType.F8E4M3FN
    _check_same_as_ort(proto, tmp_path, np.random.default_rng(3).uniform(-3, 3, (2, 4)).astype(np.float32))


def test_raising_can_be_switched_off() -> None:
    nodes = _qdq("x", "y", "s", "z")
    proto = _model(nodes, [_t("s", np.array(0.05, np.float32)), _t("z", np.array(0, np.uint8))])
    assert [n.op_type for n in import_onnx(proto, qdq=False).nodes] == list(QDQ_OPS)


# ---- bad input -----------------------------------------------------------------------------------------------------


def _bad(nodes: list[onnx.NodeProto], inits: list[TensorProto], **kw: int) -> onnx.ModelProto:
    return _model([*nodes, helper.make_node("Relu", ["xd"], ["y"])], inits, **kw)


@pytest.mark.parametrize(
    ("scale2", "zp2", "match"),
    [(0.06, 128, r"x_Q.*x_DQ.*differ in scale"), (0.05, 127, r"differ in zero point")],
)
def test_inconsistent_pair_is_refused(scale2: float, zp2: int, match: str) -> None:
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="x_Q"),
             helper.make_node("DequantizeLinear", ["xq", "s2", "z2"], ["xd"], name="x_DQ")]  # fmt: skip
    inits = [_t("s", np.array(0.05, np.float32)), _t("z", np.array(128, np.uint8)),
             _t("s2", np.array(scale2, np.float32)), _t("z2", np.array(zp2, np.uint8))]  # fmt: skip
    with pytest.raises(QDQParameterError, match=match):
        import_onnx(_bad(nodes, inits))


def test_per_axis_length_mismatch_is_refused() -> None:
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0, name="w_DQ"),
             helper.make_node("MatMul", ["x", "w"], ["xd"])]  # fmt: skip
    inits = [_t("wq", np.ones((4, 4), np.int8)), _t("ws", np.full(3, 0.1, np.float32)), _t("wz", np.zeros(3, np.int8))]
    with pytest.raises(QDQParameterError, match=r"w_DQ.*3 elements but axis 0 of its input has size 4"):
        import_onnx(_bad(nodes, inits))


@pytest.mark.parametrize("scale", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_scale_is_refused(scale: float) -> None:
    nodes = _qdq("x", "xd", "s", "z")
    inits = [_t("s", np.array(scale, np.float32)), _t("z", np.array(0, np.uint8))]
    with pytest.raises(QDQParameterError, match=r"xd_Q.*scales must be finite and > 0"):
        import_onnx(_bad(nodes, inits))


def test_runtime_scale_is_unsupported() -> None:
    nodes = [helper.make_node("Abs", ["x"], ["sx"]), helper.make_node("ReduceMax", ["sx"], ["s"], keepdims=0),
             *_qdq("x", "xd", "s", "z")]  # fmt: skip
    with pytest.raises(UnsupportedOpError, match=r"xd_Q.*scale %s is computed at run time"):
        import_onnx(_bad(nodes, [_t("z", np.array(0, np.uint8))]))


def test_nncf_onnx_model(tmp_path: Path) -> None:
    """NNCF's ONNX path (nncf.quantize on the float ONNX model) imports, raises fully and re-emits bit-exactly."""
    import nncf

    model = onnx.load(str(bundled_model_path()))
    name = model.graph.input[0].name
    calib = load_digits_split().calib_x
    dataset = nncf.Dataset([{name: calib[i : i + 1]} for i in range(len(calib))])
    qmodel = nncf.quantize(model, dataset, subset_size=len(calib))
    _check_same_as_ort(qmodel, tmp_path, load_digits_split().test_x)


# ---- PT2E patterns (torch.onnx's lowering of torchao's quantized_decomposed ops) ----------------------------------


def _clipped_weight(lo: int | None, hi: int, *, bound_dt: int = TensorProto.INT8) -> tuple[list, list]:
    """Float weight -> Q (per axis) -> Clip(lo, hi) -> DQ -> MatMul, as PT2E's quantize_per_channel exports."""
    w = np.array([[-1.28, 0.5], [0.3, 1.27], [0.0, -0.64], [1.0, -1.3]], np.float32)  # -1.28/0.01 is -128
    nodes = [helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"], axis=1, name="w_Q"),
             helper.make_node("Clip", ["wq", "lo" if lo is not None else "", "hi"], ["wc"], name="w_Clip"),
             helper.make_node("DequantizeLinear", ["wc", "ws", "wz"], ["wd"], axis=1, name="w_DQ"),
             helper.make_node("MatMul", ["x", "wd"], ["y"])]  # fmt: skip
    inits = [_t("w", w), _t("ws", np.array([0.01, 0.01], np.float32)), _t("wz", np.zeros(2, np.int8)),
             _t("hi", np.array(hi), bound_dt)]  # fmt: skip
    if lo is not None:
        inits.append(_t("lo", np.array(lo), bound_dt))
    return nodes, inits


def test_clipped_weight_narrows_the_range(tmp_path: Path) -> None:
    """Q -> Clip(-127, 127) -> DQ: a type with qmin -127, so -1.28 stays -127 as in the source, not -128."""
    proto = _model(*_clipped_weight(-127, 127))
    g = import_onnx(proto)
    q = g.constants["w"].quant
    assert isinstance(q, QuantType) and (q.qmin, q.qmax) == (-127, 127) and q.scheme.value == "sym"
    assert [n.op_type for n in g.nodes] == ["MatMul"] and "lo" not in g.constants
    _check_same_as_ort(proto, tmp_path, np.random.default_rng(4).uniform(-1, 1, (2, 4)).astype(np.float32))


def test_clip_without_min_keeps_the_storage_minimum(tmp_path: Path) -> None:
    proto = _model(*_clipped_weight(None, 100))
    q = import_onnx(proto).constants["w"].quant
    assert isinstance(q, QuantType) and (q.qmin, q.qmax) == (-128, 100)
    _check_same_as_ort(proto, tmp_path, np.random.default_rng(5).uniform(-1, 1, (2, 4)).astype(np.float32))


def test_clip_narrowing_an_activation_is_kept_as_ops() -> None:
    """The Q/DQ lowering of activations saturates at the storage range, so a narrowed activation stays explicit."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="x_Q"),
             helper.make_node("Clip", ["xq", "", "hi"], ["xc"], name="x_Clip"),
             helper.make_node("DequantizeLinear", ["xc", "s", "z"], ["xd"], name="x_DQ"),
             helper.make_node("Relu", ["xd"], ["y"])]  # fmt: skip
    inits = [_t("s", np.array(0.05, np.float32)), _t("z", np.array(0, np.uint8)), _t("hi", np.array(127, np.uint8))]
    g = import_onnx(_model(nodes, inits))
    assert [n.op_type for n in g.nodes] == ["QuantizeLinear", "Clip", "DequantizeLinear", "Relu"]
    assert g.inputs[0].quant is None


@pytest.mark.parametrize(
    ("lo", "hi", "bound_dt", "error", "match"),
    [
        (5, 5, TensorProto.INT8, QDQParameterError, r"w_Clip.*clips i8 data to \[5, 5\], which leaves 1 level"),
        (0, 127, TensorProto.UINT8, QDQParameterError, r"w_Clip.*min %lo is u8\[\]; expected a i8 scalar"),
    ],
)
def test_bad_clip_is_refused(lo: int, hi: int, bound_dt: int, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        import_onnx(_model(*_clipped_weight(lo, hi, bound_dt=bound_dt)))


def test_runtime_clip_bound_is_unsupported() -> None:
    nodes, inits = _clipped_weight(-127, 127)
    nodes.insert(0, helper.make_node("Identity", ["hi0"], ["hi"]))  # not folded away: hi0 is a graph input
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    hi0 = helper.make_tensor_value_info("hi0", TensorProto.INT8, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", [x, hi0], [y], [i for i in inits if i.name != "hi"])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    with pytest.raises(UnsupportedOpError, match=r"w_Clip.*its max %hi is computed at run time"):
        import_onnx(proto)


def test_stored_weight_is_named_after_its_parameter() -> None:
    """PT2E stores weights as `_frozen_paramN`; the reader's source module names them (`fc.weight`, `fc.bias`)."""
    nodes = [helper.make_node("DequantizeLinear", ["_frozen_param0", "ws"], ["dequantize_per_channel"], axis=0),
             helper.make_node("DequantizeLinear", ["_frozen_param1", "bs"], ["dequantize_bias"]),
             helper.make_node("Gemm", ["x", "dequantize_per_channel", "dequantize_bias"], ["y"], transB=1,
                              name="node_linear")]  # fmt: skip
    helper.set_metadata_props(nodes[2], {"quantir.source.module": "fc", "quantir.source.type": "torch.nn.Linear"})
    inits = [_t("_frozen_param0", np.ones((3, 4), np.int8)), _t("ws", np.full(3, 0.1, np.float32)),
             _t("_frozen_param1", np.arange(3, dtype=np.int32)), _t("bs", np.array(0.001, np.float32))]  # fmt: skip
    g = import_onnx(_model(nodes, inits))
    assert sorted(g.constants) == ["fc.bias", "fc.weight"]
    assert all(isinstance(c.quant, QuantType) for c in g.constants.values())


def test_constant_expression_scale_says_to_fold_it() -> None:
    """torch.onnx.export(..., optimize=False) writes Cast(initializer) scales; the error says how to fix that."""
    nodes = [helper.make_node("Cast", ["s0"], ["s"], to=TensorProto.FLOAT, name="node_Cast_1"),
             *_qdq("x", "xd", "s", "z")]  # fmt: skip
    inits = [_t("s0", np.array(0.05, np.float32)), _t("z", np.array(0, np.uint8))]
    with pytest.raises(UnsupportedOpError, match=r"xd_Q.*scale %s is computed at run time by Cast node 'node_Cast_1' "
                                                 r"from constants only; constant-fold the model first"):  # fmt: skip
        import_onnx(_bad(nodes, inits))
