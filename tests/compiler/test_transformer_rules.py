"""The rules that keep transformers accurate: constant folding of weight layouts, no output Q for MatMuls read
only by float ops, fill-constant (attention-mask) ranges left float with a reason, Add/Mul only between int8
kernels, and SmoothQuant. Each is checked on a small real ONNX model run in ONNX Runtime.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quantir.compiler.api import quantize
from quantir.compiler.config.quant_config import StaticQuantConfig

rng = np.random.default_rng(0)
H, F = 16, 32


def _linear(name: str, x: str, k: int, n: int, out: str, *, outlier: bool = False) -> tuple[list, list]:
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.2
    b = rng.standard_normal(n).astype(np.float32) * 0.1
    inits = [numpy_helper.from_array(w, f"{name}.weight"), numpy_helper.from_array(b, f"{name}.bias")]
    nodes = [
        helper.make_node("Transpose", [f"{name}.weight"], [f"{name}.wt"], perm=[1, 0], name=f"{name}_t"),
        helper.make_node("MatMul", [x, f"{name}.wt"], [f"{name}.mm"], name=f"{name}_mm"),
        helper.make_node("Add", [f"{name}.mm", f"{name}.bias"], [out], name=f"{name}_bias"),
    ]
    return nodes, inits


def _block() -> onnx.ModelProto:
    """x -> LayerNorm -> fc1 -> Gelu -> fc2 -> + residual -> LayerNorm, plus a masked score path."""
    nodes, inits = [], []
    inits += [
        numpy_helper.from_array(np.ones(H, np.float32), "ln.g"),
        numpy_helper.from_array(np.zeros(H, np.float32), "ln.b"),
    ]
    nodes.append(helper.make_node("LayerNormalization", ["x", "ln.g", "ln.b"], ["h"], axis=-1, name="ln"))
    for n, i in (_linear("fc1", "h", H, F, "a"), _linear("fc2", "g", F, H, "o")):
        nodes += n
        inits += i
    nodes.insert(4, helper.make_node("Gelu", ["a"], ["g"], name="gelu", domain=""))
    nodes.append(helper.make_node("Add", ["o", "h"], ["r"], name="residual"))
    nodes.append(helper.make_node("LayerNormalization", ["r", "ln.g", "ln.b"], ["y"], axis=-1, name="ln2"))
    # A masked path: mask * finfo.min added to scores, as eager attention does.
    inits.append(numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), "neg"))
    nodes.append(helper.make_node("Mul", ["mask", "neg"], ["bias_mask"], name="mask_scale"))
    nodes.append(helper.make_node("Add", ["y", "bias_mask"], ["scores"], name="mask_add"))
    nodes.append(helper.make_node("Softmax", ["scores"], ["probs"], axis=-1, name="softmax"))
    graph = helper.make_graph(
        nodes, "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, H]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 8, H])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 8, H])],
        initializer=inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def _data(n: int = 8) -> list[dict[str, np.ndarray]]:
    out = []
    for _ in range(n):
        x = rng.standard_normal((4, 8, H)).astype(np.float32)
        x[..., 3] *= 40.0  # an outlier channel, as in real transformer activations
        mask = (rng.random((4, 8, H)) < 0.2).astype(np.float32)
        out.append({"x": x, "mask": mask})
    return out


def test_weights_behind_transpose_are_folded_and_keep_their_names() -> None:
    q = quantize(_block(), StaticQuantConfig(), _data())
    names = {v.name for v in q.ir.constants.values() if v.quant is not None}
    assert {"fc1.weight", "fc2.weight"} <= names
    assert not any(n.op_type == "Transpose" for n in q.ir.nodes)
    w = q.ir.constants["fc1.weight"]
    assert w.const is not None and w.const.shape == (H, F)  # the [K, N] layout MatMul reads


def test_fill_constant_ranges_stay_float_with_reason() -> None:
    q = quantize(_block(), StaticQuantConfig(), _data())
    by_name = {d.name: d for d in q.decisions()}
    assert not by_name["mask_add"].quantized
    assert "fill constant such as an attention mask" in by_name["mask_add"].reason


def test_residual_add_through_layernorm_stays_float_and_matmuls_stay_int8() -> None:
    q = quantize(_block(), StaticQuantConfig(), _data())
    by_name = {d.name: d for d in q.decisions()}
    assert not by_name["residual"].quantized
    assert "joins float data" in by_name["residual"].reason
    assert by_name["fc1_mm"].quantized and by_name["fc2_mm"].quantized
    assert "output stays float" in by_name["fc2_mm"].reason  # read only by float ops: MatMulIntegerToFloat


def _error(cfg: StaticQuantConfig, data: list[dict[str, np.ndarray]]) -> float:
    import onnxruntime as ort

    model = _block()
    q = quantize(model, cfg, data)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    held = _data(4)
    errs = [np.abs(q(b) - ref.run(None, b)[0]).mean() for b in held]
    return float(np.mean(errs))


def test_smooth_quant_preserves_float_math_and_reduces_error() -> None:
    data = _data()
    plain = _error(StaticQuantConfig(smooth_quant=False), data)
    smooth = _error(StaticQuantConfig(smooth_quant=True, smooth_quant_alpha=0.8), data)
    assert smooth < plain, (smooth, plain)
    q = quantize(_block(), StaticQuantConfig(smooth_quant=True, smooth_quant_alpha=0.8), data)
    muls = [d for d in q.decisions() if d.op_type == "Mul" and "SmoothQuant" in d.reason]
    assert len(muls) == 2  # one per smoothed activation (the LayerNorm output and the Gelu output)


def test_smooth_quant_alone_is_exact_in_float() -> None:
    import onnxruntime as ort

    from quantir.backends.onnx_proto import emit_model
    from quantir.compiler.api import prepare
    from quantir.compiler.pass_manager import PassManager
    from quantir.compiler.passes import SmoothQuant
    from quantir.compiler.passes.smooth_quant import select_smoothing_targets

    model = _block()
    prepared = prepare(model, StaticQuantConfig(smooth_quant=True))
    prepared.calibrate(_data())
    graph, ctx = prepared.annotate()
    ctx.smooth_targets = select_smoothing_targets(graph)
    ctx.channel_ranges = prepared.calibrator.channel_ranges(ctx.smooth_targets)
    assert ctx.smooth_targets and set(ctx.channel_ranges) == set(ctx.smooth_targets)
    PassManager([SmoothQuant(alpha=0.5)]).run(graph, ctx)
    for v in graph.values():
        v.quant = None
    smoothed = ort.InferenceSession(emit_model(graph).SerializeToString(), providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    batch = _data(1)[0]
    np.testing.assert_allclose(smoothed.run(None, batch)[0], ref.run(None, batch)[0], rtol=1e-4, atol=1e-5)


def test_the_default_turns_smooth_quant_on_for_transformer_blocks_and_says_why() -> None:
    data = _data()
    q = quantize(_block(), StaticQuantConfig(), data)
    assert len(q.ctx.recipes) == 1
    assert q.ctx.recipes[0].startswith("SmoothQuant alpha=0.95 on 2 activation(s)")
    assert "transformer-style blocks (2 LayerNorm, 1 GELU)" in q.ctx.recipes[0]
    assert q.manifest()["recipes"] == q.ctx.recipes
    assert sum("SmoothQuant" in d.reason for d in q.decisions()) == 2
    assert _error(StaticQuantConfig(), data) < _error(StaticQuantConfig(smooth_quant=False), data)


def test_smooth_quant_false_turns_the_default_off_and_true_keeps_incs_alpha() -> None:
    data = _data()
    off = quantize(_block(), StaticQuantConfig(smooth_quant=False), data)
    assert off.ctx.recipes == ["no SmoothQuant: smooth_quant=False"]
    assert not any("SmoothQuant" in d.reason for d in off.decisions())
    on = quantize(_block(), StaticQuantConfig(smooth_quant=True), data)
    assert on.ctx.recipes[0].startswith("SmoothQuant alpha=0.5 ")  # INC's default alpha when asked explicitly


def test_a_cnn_keeps_the_plain_recipe() -> None:
    from quantir.tools.digits import bundled_model_path, load_digits_split

    x = load_digits_split().calib_x[:64]
    q = quantize(str(bundled_model_path()), StaticQuantConfig(), [{"x": x}])
    assert q.ctx.recipes == ["no SmoothQuant: smooth_quant=None: no transformer-style block"]


def test_attention_and_decomposed_layernorm_are_recognized() -> None:
    from quantir.compiler.recipes import transformer_blocks
    from quantir.frontends.onnx import import_onnx

    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mu"], axes=[-1], name="mean"),
        helper.make_node("Sub", ["x", "mu"], ["xc"], name="centre"),
        helper.make_node("Transpose", ["xc"], ["xt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["xc", "xt"], ["scores"]),
        helper.make_node("Div", ["scores", "d"], ["scaled"]),
        helper.make_node("Softmax", ["scaled"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "xc"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "attn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, H])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, H])],
        initializer=[numpy_helper.from_array(np.array(4.0, np.float32), "d")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert transformer_blocks(import_onnx(model)) == "1 LayerNorm, 1 attention Softmax"
