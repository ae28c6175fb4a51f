"""legalize_for_onnx_qdq on small hand-built graphs quantized from ranges measured in ONNX Runtime.

The graph builders here (`Net`, `cnn`, ...) are shared with test_onnx_qdq_emit.py and test_onnx_qdq_verify.py.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from quantir.backends.onnx_proto import emit_model
from quantir.backends.onnx_qdq import legalize_for_onnx_qdq
from quantir.backends.onnx_qdq.legalize import quantized_compute_units
from quantir.compiler.isa import default_reduce_range
from quantir.compiler.qparams.scales import bias_qparams, compute_qparams, unify_ranges
from quantir.ir import (
    Attr,
    DType,
    Granularity,
    Graph,
    Node,
    PassError,
    QuantSpec,
    Scheme,
    SourceInfo,
    Tensor,
    TensorType,
    Value,
    traits_of,
    verify,
    weight_inputs,
)

F32, U8, I8 = DType.F32, DType.U8, DType.I8
U8_ASYM = QuantSpec(U8, Scheme.ASYM)


class Net:
    """A tiny IR graph builder; `calibrate` measures every value in ORT and `quantize` annotates like the compiler."""

    def __init__(self, name: str, opset: int = 17) -> None:
        self.g = Graph(name, opset_imports={"": opset})
        self.rng = np.random.default_rng(0)
        self.feeds: dict[str, np.ndarray] = {}

    def input(self, name: str, shape: tuple[int, ...]) -> Value:
        v = Value(name, TensorType(F32, shape))
        self.g.inputs.append(v)
        self.feeds[name] = self.rng.standard_normal(shape).astype(np.float32)
        return v

    def const(self, name: str, array: np.ndarray) -> Value:
        return self.g.add_constant(name, Tensor.from_numpy(np.asarray(array)))

    def weight(self, name: str, *shape: int) -> Value:
        return self.const(name, (self.rng.standard_normal(shape) * 0.5).astype(np.float32))

    def op(self, op_type: str, inputs: list[Value | None], out: str, *, name: str = "", module: str = "",
           **attrs: object) -> Value:  # fmt: skip
        v = Value(out, TensorType(F32))
        source = SourceInfo(module, f"torch.nn.{op_type}") if module else None
        self.g.append(Node(op_type, inputs, [v], name=name or out, source=source,
                           attrs={k: Attr.of(a) for k, a in attrs.items()}))  # type: ignore[arg-type]  # fmt: skip
        return v

    def calibrate(self) -> dict[str, np.ndarray]:
        """Run the float graph in ORT with every node output exposed; give every value its measured shape."""
        model = emit_model(self.g)
        exposed = {o.name for o in model.graph.output}
        for node in self.g.nodes:
            for v in node.outputs:
                if v is not None and v.name not in exposed:
                    model.graph.output.append(onnx.helper.make_tensor_value_info(v.name, onnx.TensorProto.FLOAT, None))
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        arrays = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, self.feeds))) | self.feeds
        for v in self.g.values():
            if not v.is_constant and v.name in arrays:
                v.type = TensorType(F32, tuple(arrays[v.name].shape))
        return arrays

    def quantize(self, spec: QuantSpec = U8_ASYM, *, skip: tuple[str, ...] = ()) -> Graph:
        """Activations from measured ranges, scale-transparent outputs = their input's, unified Concat scales,
        per-channel s8 weights and int32 biases: what annotate + calibrate + compute_qparams produce."""
        arrays = self.calibrate()
        acts = [*self.g.inputs, *(v for n in self.g.nodes for v in n.outputs if v is not None)]
        for v in acts:
            p = v.producer
            if v.name in skip:
                continue
            if p is not None and traits_of(p.op_type).scale_transparent and p.inputs[0] is not None:
                v.quant = p.inputs[0].quant
            else:
                v.quant = compute_qparams(arrays[v.name].min(), arrays[v.name].max(), spec)
        for node in self.g.nodes:
            if node.op_type == "Concat":
                members = [v for v in (*node.inputs, node.output()) if v is not None and v.name not in skip]
                q = compute_qparams(
                    *unify_ranges([(arrays[v.name].min(), arrays[v.name].max()) for v in members]), spec
                )
                for v in members:
                    v.quant = q
            for idx, axis in weight_inputs(node).items():
                w = node.inputs[idx]
                if w is None or w.const is None or w.name in skip:
                    continue
                arr = w.const.numpy()
                red = tuple(i for i in range(arr.ndim) if i != axis)
                # 7-bit weights where ORT's u8s8 kernels saturate (AVX2 without VNNI), as quantir's default does
                narrow = {"qmin": -64, "qmax": 64} if default_reduce_range() else {}
                wspec = QuantSpec(I8, Scheme.SYM, Granularity.per_channel(axis), **narrow)  # type: ignore[arg-type]
                w.quant = compute_qparams(arr.min(axis=red), arr.max(axis=red), wspec)
                b_idx = traits_of(node.op_type).bias
                b = node.inputs[b_idx] if b_idx is not None and b_idx < len(node.inputs) else None
                x = node.inputs[0]
                if b is not None and b.name not in skip and x is not None and x.quant is not None:
                    b.quant = bias_qparams(x.quant, w.quant)  # type: ignore[arg-type]
        verify(self.g)
        return self.g


def cnn(*, beta: float = 1.0) -> Net:
    """x -> Conv(+bias) -> Relu -> MaxPool -> Reshape -> Gemm(+bias, transB) -> y."""
    n = Net("cnn")
    x = n.input("x", (2, 3, 8, 8))
    c = n.op("Conv", [x, n.weight("conv1.weight", 4, 3, 3, 3), n.weight("conv1.bias", 4)], "c", name="conv1",
             module="conv1", pads=[1, 1, 1, 1])  # fmt: skip
    r = n.op("Relu", [c], "r", name="relu", module="relu")
    m = n.op("MaxPool", [r], "m", name="pool", module="pool", kernel_shape=[2, 2], strides=[2, 2])
    f = n.op("Reshape", [m, n.const("shape", np.array([2, -1], np.int64))], "f", name="flatten")
    y = n.op("Gemm", [f, n.weight("fc.weight", 5, 64), n.weight("fc.bias", 5)], "y", name="fc", module="fc",
             transB=1, beta=beta)  # fmt: skip
    n.g.outputs.append(y)
    return n


def matmul_const(*, quantize_output: bool) -> Net:
    n = Net("mm")
    y = n.op("MatMul", [n.input("a", (4, 16)), n.weight("w", 16, 8)], "y", name="mm", module="proj")
    n.g.outputs.append(y)
    n.quantize(skip=() if quantize_output else ("y",))
    return n


def add_activations() -> Net:
    n = Net("add")
    n.g.outputs.append(n.op("Add", [n.input("a", (4, 8)), n.input("b", (4, 8))], "y", name="add"))
    n.quantize()
    return n


def layernorm_between() -> Net:
    """a -> MatMul -> LayerNormalization -> MatMul -> y: LayerNorm stays float between two integer MatMuls."""
    n = Net("ln")
    m1 = n.op("MatMul", [n.input("a", (4, 16)), n.weight("w1", 16, 16)], "m1", name="mm1")
    ln = n.op("LayerNormalization", [m1, n.const("gamma", np.ones(16, np.float32)),
                                     n.const("beta", np.zeros(16, np.float32))], "ln", name="ln", axis=-1)  # fmt: skip
    n.g.outputs.append(n.op("MatMul", [ln, n.weight("w2", 16, 8)], "y", name="mm2"))
    n.quantize()
    return n


def concat() -> Net:
    n = Net("concat")
    n.g.outputs.append(n.op("Concat", [n.input("a", (4, 8)), n.input("b", (4, 8))], "y", name="cat", axis=1))
    n.quantize()
    return n


def matmul_activations() -> Net:
    n = Net("mm_aa")
    n.g.outputs.append(n.op("MatMul", [n.input("a", (4, 16)), n.input("b", (16, 4))], "y", name="mm_aa"))
    n.quantize()
    return n


def _decisions(graph: Graph) -> dict[str, tuple[bool, str]]:
    report = legalize_for_onnx_qdq(graph)
    verify(graph)
    return {d.name: (d.quantized, d.reason) for d in report.nodes}


def test_cnn_all_units_fuse_and_relu_folds() -> None:
    g = cnn().quantize()
    report = legalize_for_onnx_qdq(g)
    assert {d.name: (d.quantized, d.reason) for d in report.nodes} == {
        "conv1": (True, "runs as QLinearConv"),
        "relu": (True, "Relu folded into Q"),
        "pool": (True, "runs on 8-bit data (ORT drops the Q/DQ around MaxPool)"),
        "flatten": (True, "runs on 8-bit data (ORT drops the Q/DQ around Reshape)"),
        "fc": (True, "runs as QGemm"),
    }
    assert report["conv1"].module == "conv1" and report["conv1"].op_type == "Conv"
    assert [(d.value, d.reason) for d in report.removed] == [("c", "Relu folded into Q")]
    assert g.nodes[0].output().quant is None and g.nodes[1].output().quant is not None
    assert [(n.name, k) for n, k in quantized_compute_units(g)] == [("conv1", "QLinearConv"), ("fc", "QGemm")]
    assert "Relu folded into Q" in report.format()
    assert legalize_for_onnx_qdq(g).removed == []  # idempotent


def test_gemm_beta_prevents_fusion_and_leaves_no_orphans() -> None:
    g = cnn(beta=0.5).quantize()
    report = legalize_for_onnx_qdq(g)
    assert (report["fc"].quantized, report["fc"].reason) == (False, "Gemm beta=0.5 prevents QGemm fusion")
    assert report["conv1"].quantized and report["flatten"].quantized  # f keeps its Q: QLinearConv's output chain
    removed = {d.value: d.reason for d in report.removed}
    assert removed == {
        "c": "Relu folded into Q",
        "fc.weight": "no integer kernel reads or writes it",
        "fc.bias": "no integer kernel reads or writes it",
        "y": "no integer kernel reads or writes it",
    }
    assert g.constants["fc.weight"].quant is None and g.outputs[0].quant is None


def test_matmul_with_float_output_becomes_matmul_integer_to_float() -> None:
    assert _decisions(matmul_const(quantize_output=False).g) == {"mm": (True, "runs as MatMulIntegerToFloat")}
    assert _decisions(matmul_const(quantize_output=True).g) == {"mm": (True, "runs as QLinearMatMul")}


def test_add_concat_and_activation_matmul_fuse() -> None:
    assert _decisions(add_activations().g) == {"add": (True, "runs as QLinearAdd")}
    assert _decisions(concat().g) == {"cat": (True, "runs as QLinearConcat")}
    assert _decisions(matmul_activations().g) == {"mm_aa": (True, "runs as QLinearMatMul")}


def test_layernorm_stays_float_between_integer_matmuls() -> None:
    g = layernorm_between().g
    report = legalize_for_onnx_qdq(g)
    assert (report["ln"].quantized, report["ln"].reason) == (
        False,
        "LayerNormalization has no integer kernel in ONNX Runtime",
    )
    assert report["mm1"].quantized and report["mm2"].quantized
    assert report.removed == []  # m1 is written by QLinearMatMul, ln is read by one: both Q/DQ pairs are needed


def test_orphan_quantization_is_removed_with_its_reason() -> None:
    n = Net("orphan")
    ln = n.op("LayerNormalization", [n.input("x", (4, 8)), n.const("gamma", np.ones(8, np.float32))], "ln", axis=-1)
    n.g.outputs.append(n.op("Div", [ln, n.const("two", np.float32(2.0))], "y", name="div"))
    g = n.quantize()
    report = legalize_for_onnx_qdq(g)
    assert [(d.value, d.reason) for d in report.removed] == [
        ("x", "no integer kernel reads or writes it"),
        ("ln", "no integer kernel reads or writes it"),
        ("y", "no integer kernel reads or writes it"),
    ]
    assert report["div"].reason == "Div has no integer kernel in ONNX Runtime"
    assert not any(v.quant for v in g.values())
    assert report.opset_after == report.opset_before == 17


def test_incomplete_unit_and_float_bias_are_dequantized_with_reasons() -> None:
    g = cnn().quantize(skip=("fc.bias",))
    report = legalize_for_onnx_qdq(g)
    assert (
        report["fc"].reason == "bias %fc.bias of Gemm is float; QGemm needs an int32 bias (scale s_x·s_w, zero point 0)"
    )
    g = matmul_const(quantize_output=True).g
    g.constants["w"].quant = None
    report = legalize_for_onnx_qdq(g)
    assert report["mm"].reason == (
        "input %w of MatMul is not quantized; ORT fuses MatMul into QLinearMatMul only when every float input comes "
        "from DequantizeLinear"
    )
    assert {d.value for d in report.removed} == {"a", "y"}


def test_drop_unit_with_different_parameters_runs_in_float() -> None:
    n = Net("reshape")
    x = n.input("x", (2, 8))
    t = n.op("Transpose", [x], "t", perm=[1, 0])
    n.g.outputs.append(n.op("MatMul", [t, n.weight("w", 2, 4)], "y", name="mm"))
    g = n.quantize()
    t.quant = compute_qparams(-8.0, 8.0, U8_ASYM)
    report = legalize_for_onnx_qdq(g)
    assert report["t"].reason.startswith("Transpose input and output quantization differ (%x: u8 scale [")
    assert report["t"].reason.endswith("ORT drops the Q/DQ around Transpose only when they are identical")
    assert report["mm"].quantized and t.quant is not None  # the Q on %t still feeds QLinearMatMul


def test_symmetric_s8_relu_is_not_folded() -> None:
    g = cnn().quantize(QuantSpec(I8, Scheme.SYM))
    report = legalize_for_onnx_qdq(g)
    assert report["relu"].reason == (
        "Relu has no integer kernel in ONNX Runtime; Relu output zero point 0 is not the i8 minimum -128, so "
        "QuantizeLinear does not clamp like Relu"
    )
    assert report["conv1"].reason == "runs as QLinearConv" and report["fc"].reason == "runs as QGemm"


def test_per_channel_weights_raise_the_opset_when_the_model_allows() -> None:
    n = Net("old", opset=11)
    n.g.outputs.append(n.op("MatMul", [n.input("a", (4, 16)), n.weight("w", 16, 8)], "y", name="mm"))
    g = n.quantize()
    report = legalize_for_onnx_qdq(g)
    assert (report.opset_before, report.opset_after, g.opset) == (11, 13, 13)


def test_opset_raise_rewrites_ops_whose_inputs_changed() -> None:
    """Squeeze-13 takes `axes` as an input: the opset-11 attribute becomes a constant input, and the opset rises."""
    n = Net("old", opset=11)
    s = n.op("Add", [n.input("a", (1, 8)), n.input("b", (1, 8))], "s", name="add")
    n.g.outputs.append(n.op("Squeeze", [s], "y", name="sq", axes=[0]))
    g = n.quantize()
    report = legalize_for_onnx_qdq(g)
    assert (report.opset_before, report.opset_after, g.opset) == (11, 13, 13)
    sq = next(node for node in g.nodes if node.op_type == "Squeeze")
    axes = sq.inputs[1]
    assert "axes" not in sq.attrs and axes is not None and axes.const is not None
    assert axes.const.numpy().tolist() == [0]
    assert report["add"].quantized and report["sq"].quantized
    assert [c.value for c in report.changed] == ["Squeeze node 'sq'"]


def test_opset_raise_refused_when_no_rewrite_keeps_the_meaning() -> None:
    n = Net("old", opset=8)
    m = n.op("MatMul", [n.input("a", (1, 4, 4, 4)), n.weight("w", 4, 4)], "m", name="mm")
    n.g.outputs.append(n.op("Upsample", [m], "y", name="up", scales=[1.0, 1.0, 2.0, 2.0]))
    g = n.quantize()
    with pytest.raises(PassError, match=r"Upsample node 'up': .* the graph is opset 8 and Upsample changed its "
                       r"inputs or meaning at opset 9, which quantir cannot rewrite") as e:  # fmt: skip
        legalize_for_onnx_qdq(g)
    assert "convert_version(model, 13)" in str(e.value) and g.opset == 8 and g.constants["w"].quant is not None


def test_clip_folds_only_when_the_quantized_range_is_inside_it() -> None:
    n = Net("clip")
    c = n.op("Conv", [n.input("x", (1, 3, 6, 6)), n.weight("w", 4, 3, 3, 3)], "c", name="conv")
    lo, hi = n.const("lo", np.float32(0.0)), n.const("hi", np.float32(6.0))
    n.g.outputs.append(n.op("Clip", [c, lo, hi], "y", name="relu6"))
    g = n.quantize()
    assert legalize_for_onnx_qdq(g)["relu6"].reason == "Clip folded into Q"
    g = n.quantize()
    g.outputs[0].quant = compute_qparams(0.0, 10.0, U8_ASYM)  # Q saturates at 10: the clamp at 6 is real
    report = legalize_for_onnx_qdq(g)
    assert report["relu6"].reason == (
        "Clip has no integer kernel in ONNX Runtime; Clip range [0, 6] is narrower than the quantized range of %y"
    )
    assert report["conv"].reason == "runs as QLinearConv" and c.quant is not None  # Conv -> Q -> DQ -> float Clip
    assert [(d.value, d.reason) for d in report.removed] == [("y", "no integer kernel reads or writes it")]


def test_shape_arithmetic_is_not_a_candidate() -> None:
    g = Graph("shapes", opset_imports={"": 17})
    x = Value("x", TensorType(F32, (2, 3)))
    s = Value("s", TensorType(DType.I64, (2,)))
    c = Value("c", TensorType(DType.I64, (3,)))
    g.inputs.append(x)
    g.append(Node("Shape", [x], [s], name="shape"))
    g.append(Node("Concat", [s, g.add_constant("one", Tensor.from_numpy(np.array([1], np.int64)))], [c], name="cat",
                  attrs={"axis": Attr.of(0)}))  # fmt: skip
    g.outputs.append(c)
    assert _decisions(g) == {
        "shape": (False, "Shape has no integer kernel in ONNX Runtime"),
        "cat": (False, "Concat works on i64 data, not float: nothing to quantize"),
    }


def test_uncalibrated_spec_is_refused() -> None:
    n = Net("spec")
    n.g.outputs.append(n.op("Relu", [n.input("x", (2, 2))], "y", name="relu"))
    n.g.outputs[0].quant = U8_ASYM
    with pytest.raises(PassError, match=r"%y \(output of Relu node 'relu'.*uncalibrated QuantSpec \(u8 asym\)"):
        legalize_for_onnx_qdq(n.g)
