"""canonicalize: BatchNorm folding (numerics checked in ONNX Runtime), provenance kept, Dropout/Identity removal."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from quantir.backends.onnx_proto import emit_model
from quantir.compiler.pass_manager import PassContext, PassManager
from quantir.compiler.passes import Canonicalize
from quantir.frontends.onnx import import_onnx
from quantir.ir import Attr, DType, Graph, Node, SourceInfo, Tensor, TensorType, Value
from quantir.tools.digits import bundled_model_path, load_digits_split

F32 = DType.F32
rng = np.random.default_rng(0)


def _c(g: Graph, name: str, *shape: int, positive: bool = False) -> Value:
    data = rng.standard_normal(shape).astype(np.float32)
    return g.add_constant(name, Tensor.from_numpy(np.abs(data) + 0.5 if positive else data))


def _bn(g: Graph, x: Value, stem: str, c: int, out: str, *, training: int = 0) -> Node:
    ins = [x, _c(g, f"{stem}.weight", c), _c(g, f"{stem}.bias", c), _c(g, f"{stem}.running_mean", c),
           _c(g, f"{stem}.running_var", c, positive=True)]  # fmt: skip
    attrs = {"epsilon": Attr.of(1e-3)} | ({"training_mode": Attr.of(1)} if training else {})
    return g.append(Node("BatchNormalization", ins, [Value(out, x.type)], attrs=attrs,
                         source=SourceInfo(stem, "torch.nn.modules.batchnorm.BatchNorm2d")))  # fmt: skip


def _conv_bn_graph(*, conv_bias: bool) -> Graph:
    g = Graph("convbn", opset_imports={"": 17})
    x = Value("x", TensorType(F32, ("N", 3, 6, 6)))
    g.inputs.append(x)
    ins = [x, _c(g, "conv1.weight", 4, 3, 3, 3)] + ([_c(g, "conv1.bias", 4)] if conv_bias else [])
    conv = g.append(Node("Conv", ins, [Value("c", TensorType(F32, ("N", 4, 6, 6)))],
                         attrs={"pads": Attr.of([1, 1, 1, 1])}, name="conv",
                         source=SourceInfo("conv1", "torch.nn.Conv2d")))  # fmt: skip
    bn = _bn(g, conv.output(), "bn1", 4, "b")
    drop = g.append(Node("Dropout", [bn.output()], [Value("d", bn.output().type), None]))
    ident = g.append(Node("Identity", [drop.output()], [Value("i", bn.output().type)]))
    relu = g.append(Node("Relu", [ident.output()], [Value("y", bn.output().type)]))
    g.outputs.append(relu.output())
    return g


def _gemm(g: Graph) -> Node:
    """x[N, 5] -> Gemm(transB, beta 0.5) -> [N, 3], with a bias."""
    x = Value("x", TensorType(F32, ("N", 5)))
    g.inputs.append(x)
    gemm = g.append(Node("Gemm", [x, _c(g, "fc.weight", 3, 5), _c(g, "fc.bias", 3)],
                         [Value("f", TensorType(F32, ("N", 3)))], attrs={"transB": Attr.of(1), "beta": Attr.of(0.5)},
                         source=SourceInfo("fc", "torch.nn.Linear")))  # fmt: skip
    return gemm


def _gemm_bn_graph() -> Graph:
    g = Graph("gemmbn", opset_imports={"": 17})
    gemm = _gemm(g)
    bn = _bn(g, gemm.output(), "bn", 3, "y")
    g.outputs.append(bn.output())
    return g


def _run(g: Graph, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(emit_model(g).SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("conv_bias", [True, False])
def test_conv_batchnorm_fold_matches_and_keeps_provenance(conv_bias: bool) -> None:
    g = _conv_bn_graph(conv_bias=conv_bias)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    before = _run(g, x)
    PassManager([Canonicalize()]).run(g)
    assert [n.op_type for n in g.nodes] == ["Conv", "Relu"]
    conv = g.nodes[0]
    assert conv.source == SourceInfo("conv1", "torch.nn.Conv2d")
    assert conv.inputs[1] is not None and conv.inputs[1].name == "conv1.weight"
    assert conv.inputs[2] is not None and conv.inputs[2].name == "conv1.bias"
    np.testing.assert_allclose(_run(g, x), before, rtol=1e-5, atol=1e-5)


def test_gemm_batchnorm_fold_as_graph_output() -> None:
    g = _gemm_bn_graph()
    x = rng.standard_normal((4, 5)).astype(np.float32)
    before = _run(g, x)
    PassManager([Canonicalize()]).run(g)
    assert [n.op_type for n in g.nodes] == ["Gemm"]
    assert g.outputs[0].name == "y" and g.outputs[0].producer is g.nodes[0]
    assert "beta" not in g.nodes[0].attrs
    np.testing.assert_allclose(_run(g, x), before, rtol=1e-5, atol=1e-5)


def test_training_mode_batchnorm_is_kept_with_reason() -> None:
    g = Graph("t", opset_imports={"": 17})
    x = Value("x", TensorType(F32, ("N", 4, 2, 2)))
    g.inputs.append(x)
    conv = g.append(Node("Conv", [x, _c(g, "w", 4, 4, 1, 1)], [Value("c", x.type)]))
    bn = _bn(g, conv.output(), "bn", 4, "y", training=1)
    g.outputs.append(bn.output())
    ctx = PassContext()
    PassManager([Canonicalize()]).run(g, ctx)
    assert [n.op_type for n in g.nodes] == ["Conv", "BatchNormalization"]
    assert any("training_mode is set" in note for note in ctx.notes)


def test_bundled_model_folds_all_batchnorms_and_keeps_accuracy() -> None:
    g = import_onnx(bundled_model_path())
    split = load_digits_split()
    before = _run(g, split.test_x)
    PassManager([Canonicalize()]).run(g)
    assert "BatchNormalization" not in {n.op_type for n in g.nodes}
    convs = [n for n in g.nodes if n.op_type == "Conv"]
    assert [n.source.module for n in convs if n.source] == ["conv1", "conv2"]
    after = _run(g, split.test_x)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)
    assert (after.argmax(1) == before.argmax(1)).all()


def _conv_add_graph(
    const_shape: tuple[int, ...], *, conv_bias: bool, second_reader: bool = False, op: str = "Add"
) -> Graph:
    """x -> Conv -> Add(constant) -> Relu, the bias exported as its own node (Paddle's `conv*_offset`), optionally
    with another reader of the Conv's output; `op="Mul"`: a learnable scale instead (`mobile_one_block.w_0`)."""
    g = Graph("convadd", opset_imports={"": 17})
    x = Value("x", TensorType(F32, ("N", 3, 5, 5)))
    g.inputs.append(x)
    ins = [x, _c(g, "conv1.weight", 4, 3, 1, 1)] + ([_c(g, "conv1.bias", 4)] if conv_bias else [])
    conv = g.append(Node("Conv", ins, [Value("c", TensorType(F32, ("N", 4, 5, 5)))], name="conv",
                         source=SourceInfo("conv1", "torch.nn.Conv2d")))  # fmt: skip
    offset = _c(g, "conv1_offset", *const_shape)
    add = g.append(Node(op, [conv.output(), offset], [Value("a", conv.output().type)], name=op.lower()))
    relu = g.append(Node("Relu", [add.output()], [Value("y", conv.output().type)]))
    g.outputs.append(relu.output())
    if second_reader:
        g.outputs.append(conv.output())
    return g


@pytest.mark.parametrize(("shape", "conv_bias"), [((1, 4, 1, 1), False), ((4, 1, 1), True), ((1,), False)])
def test_a_per_channel_constant_add_becomes_the_conv_bias(shape: tuple[int, ...], conv_bias: bool) -> None:
    g = _conv_add_graph(shape, conv_bias=conv_bias)
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    before = _run(g, x)
    PassManager([Canonicalize()]).run(g)
    assert [n.op_type for n in g.nodes] == ["Conv", "Relu"]
    conv = g.nodes[0]
    bias = conv.inputs[2]
    assert bias is not None and bias.const is not None and bias.const.shape == (4,)
    assert bias.type == TensorType(F32, (4,))
    assert bias.name == ("conv1.bias" if conv_bias else "conv1_offset")  # a parameter name is kept
    assert conv.source is not None and conv.source.module == "conv1"
    np.testing.assert_allclose(_run(g, x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "second_reader", "why"),
    [((1, 4, 5, 1), False, "varies along more than the output channel"),
     ((4,), False, "varies along more than the output channel"),  # broadcasts along the last (width) axis
     ((1, 4, 1, 1), True, "the Conv output has other readers")],
)  # fmt: skip
def test_an_add_that_is_not_a_bias_is_kept(shape: tuple[int, ...], second_reader: bool, why: str) -> None:
    g = _conv_add_graph(shape, conv_bias=False, second_reader=second_reader)
    ctx = PassContext()
    PassManager([Canonicalize()]).run(g, ctx)
    assert [n.op_type for n in g.nodes] == ["Conv", "Add", "Relu"]
    assert any("'add'" in n and why in n for n in ctx.notes), ctx.notes


def test_gemm_with_a_row_constant_add_takes_it_as_bias() -> None:
    g = Graph("gemmadd", opset_imports={"": 17})
    gemm = _gemm(g)
    add = g.append(Node("Add", [_c(g, "shift", 1, 3), gemm.output()], [Value("y", gemm.output().type)]))
    g.outputs.append(add.output())
    xs = rng.standard_normal((4, 5)).astype(np.float32)
    before = _run(g, xs)
    PassManager([Canonicalize()]).run(g)
    assert [n.op_type for n in g.nodes] == ["Gemm"] and "beta" not in g.nodes[0].attrs
    assert g.outputs[0].name == "y"
    np.testing.assert_allclose(_run(g, xs), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("shape", "conv_bias"), [((1, 4, 1, 1), True), ((1,), False), ((4, 1, 1), False)])
def test_a_per_channel_constant_mul_scales_the_conv(shape: tuple[int, ...], conv_bias: bool) -> None:
    g = _conv_add_graph(shape, conv_bias=conv_bias, op="Mul")
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    before = _run(g, x)
    PassManager([Canonicalize()]).run(g)
    assert [n.op_type for n in g.nodes] == ["Conv", "Relu"]
    conv = g.nodes[0]
    assert len(conv.inputs) == (3 if conv_bias else 2)  # a scale alone adds no bias
    assert conv.inputs[1] is not None and conv.inputs[1].name == "conv1.weight"
    np.testing.assert_allclose(_run(g, x), before, rtol=1e-5, atol=1e-5)


def test_conv_mul_add_chain_folds_into_one_conv() -> None:
    """Paddle's re-parameterized block: Conv -> Mul(scale) -> Add(offset), both scalars."""
    g = _conv_add_graph((1,), conv_bias=True, op="Mul")
    relu = g.nodes[-1]
    add = g.insert_before(relu, Node("Add", [relu.inputs[0], _c(g, "offset", 1)], [Value("b", relu.inputs[0].type)]))
    relu.set_input(0, add.output())
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    before = _run(g, x)
    PassManager([Canonicalize()]).run(g)
    assert [n.op_type for n in g.nodes] == ["Conv", "Relu"]
    np.testing.assert_allclose(_run(g, x), before, rtol=1e-5, atol=1e-5)


def test_a_mul_by_a_spatial_constant_is_kept() -> None:
    g = _conv_add_graph((1, 1, 5, 5), conv_bias=True, op="Mul")
    ctx = PassContext()
    PassManager([Canonicalize()]).run(g, ctx)
    assert [n.op_type for n in g.nodes] == ["Conv", "Mul", "Relu"]
    assert any("'mul'" in n and "varies along more than the output channel" in n for n in ctx.notes), ctx.notes
