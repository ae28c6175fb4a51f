"""fold-constants on what torch's dynamo exporter writes: a bias-free Conv's zero bias computed as
Expand(CastLike(0, x), Shape(weight)[0:1]) folds to a constant, so the BatchNorm after it folds into the Conv; a
0-d result stays 0-d (Range reads scalars). Run in ONNX Runtime before and after."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from quantir.backends.onnx_proto import emit_model
from quantir.compiler.api import prepare
from quantir.compiler.pass_manager import PassContext, PassManager
from quantir.compiler.passes import FoldConstants
from quantir.frontends.onnx import import_onnx


def _model() -> onnx.ModelProto:
    r = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(r.standard_normal((4, 3, 3, 3)).astype(np.float32), "conv.weight"),
        numpy_helper.from_array(np.array(0.0, np.float64), "zero"),
        numpy_helper.from_array(r.uniform(0.5, 1.5, 4).astype(np.float32), "bn.weight"),
        numpy_helper.from_array(r.uniform(-0.2, 0.2, 4).astype(np.float32), "bn.bias"),
        numpy_helper.from_array(r.uniform(-0.2, 0.2, 4).astype(np.float32), "bn.mean"),
        numpy_helper.from_array(r.uniform(0.5, 2.0, 4).astype(np.float32), "bn.var"),
        numpy_helper.from_array(np.array([5], np.int64), "five"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
    ]
    nodes = [
        helper.make_node("Shape", ["conv.weight"], ["wshape"], start=0, end=1),
        helper.make_node("CastLike", ["zero", "x"], ["zero_f"]),
        helper.make_node("Expand", ["zero_f", "wshape"], ["bias"]),
        helper.make_node("Conv", ["x", "conv.weight", "bias"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("BatchNormalization", ["c", "bn.weight", "bn.bias", "bn.mean", "bn.var"], ["y"], name="bn"),
        helper.make_node("Squeeze", ["five", "axis0"], ["five_scalar"]),  # 0-d
        helper.make_node("Range", ["zero_i", "five_scalar", "one_i"], ["r"]),
    ]
    inits += [numpy_helper.from_array(np.array(0, np.int64), "zero_i"),
              numpy_helper.from_array(np.array(1, np.int64), "one_i")]  # fmt: skip
    graph = helper.make_graph(
        nodes, "dynamo_bias", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6]),
         helper.make_tensor_value_info("r", TensorProto.INT64, [5])], initializer=inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_dynamo_zero_bias_folds_and_batchnorm_follows() -> None:
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype(np.float32)
    before = ort.InferenceSession(_model().SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    prepared = prepare(_model())
    g = prepared.graph
    assert [n.op_type for n in g.nodes] == ["Conv", "Range"]  # Shape/CastLike/Expand folded, then BN
    conv = g.nodes[0]
    assert conv.inputs[2] is not None and conv.inputs[2].const is not None and conv.inputs[2].const.shape == (4,)
    session = ort.InferenceSession(emit_model(g).SerializeToString(), providers=["CPUExecutionProvider"])
    after = session.run(None, {"x": x})
    np.testing.assert_allclose(after[0], before[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(after[1], before[1])


def test_a_zero_d_fold_stays_zero_d() -> None:
    g = import_onnx(_model())
    PassManager([FoldConstants()]).run(g, PassContext())
    (rng,) = [n for n in g.nodes if n.op_type == "Range"]
    limit = rng.inputs[1]
    assert limit is not None and limit.const is not None and limit.const.shape == ()
