"""PP-LCNet-style blocks as Paddle exports them (PP-OCRv4's backbone): Conv -> Mul(learnable scale) ->
Add(learnable offset) -> decomposed hard-swish (x * Clip(x + 3, 0, 6) / 6) -> Conv. The scale and offset fold into
the Conv (no requantization between them), and the hard-swish gate is not quantized (no int8 kernel reads it). Each
is checked on a real ONNX model quantized and run in ONNX Runtime.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quantir.compiler.api import prepare, quantize
from quantir.compiler.config.quant_config import StaticQuantConfig
from quantir.compiler.passes import calibrate
from quantir.compiler.passes.calibrate import Calibrator, for_specs

rng = np.random.default_rng(0)


def _block(batch: int | str = "N") -> onnx.ModelProto:
    c, rng = 8, np.random.default_rng(1)  # the same weights on every call
    inits = [
        numpy_helper.from_array(rng.standard_normal((c, 3, 3, 3)).astype(np.float32) * 0.3, "conv1.w"),
        numpy_helper.from_array(np.array([1.7], np.float32), "block.scale"),
        numpy_helper.from_array(np.array([0.2], np.float32), "block.offset"),
        numpy_helper.from_array(np.array(3.0, np.float32), "three"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(6.0, np.float32), "six"),
        numpy_helper.from_array(rng.standard_normal((4, c, 1, 1)).astype(np.float32) * 0.3, "conv2.w"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv1.w"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Mul", ["block.scale", "c1"], ["s"], name="scale"),
        helper.make_node("Add", ["s", "block.offset"], ["a"], name="offset"),
        helper.make_node("Add", ["a", "three"], ["a3"], name="hs_add"),
        helper.make_node("Clip", ["a3", "zero", "six"], ["gate"], name="hs_clip"),
        helper.make_node("Mul", ["a", "gate"], ["m"], name="hs_mul"),
        helper.make_node("Div", ["m", "six"], ["hs"], name="hs_div"),
        helper.make_node("Conv", ["hs", "conv2.w"], ["y"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes, "reparam",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4, 12, 12])],
        initializer=inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _data(n: int = 4, batch: int = 8) -> list[dict[str, np.ndarray]]:
    return [{"x": rng.standard_normal((batch, 3, 12, 12)).astype(np.float32)} for _ in range(n)]


def test_scale_and_offset_fold_and_the_hard_swish_gate_stays_float() -> None:
    model = quantize(_block(), StaticQuantConfig(), _data())
    graph = model.legalized("onnx_qdq").graph
    ops = [n.op_type for n in graph.nodes]
    assert ops.count("Conv") == 2 and "Clip" in ops
    assert [n.name for n in graph.nodes if n.op_type in ("Mul", "Add")] == ["hs_add", "hs_mul"]  # folded: scale, offset
    quantized = {v.name for v in graph.values() if v.quant is not None and v.const is None}
    # The gate and x + 3 are read by no int8 kernel, so neither is quantized; conv2's input (the hard-swish output)
    # and the model input are.
    assert "gate" not in quantized and "a3" not in quantized
    assert {"x", "hs"} <= quantized
    conv1 = next(n for n in graph.nodes if n.name == "conv1")
    assert conv1.output().name == "a"  # the folded Conv's output keeps the name of what it now computes


def test_quantized_block_runs_in_ort_and_agrees() -> None:
    import tempfile

    import onnxruntime as ort

    data = _data()
    model = quantize(_block(), StaticQuantConfig(), data)
    with tempfile.TemporaryDirectory() as d:
        model.save(d)
        q = ort.InferenceSession(f"{d}/model.onnx", providers=["CPUExecutionProvider"])
        f = ort.InferenceSession(_block().SerializeToString(), providers=["CPUExecutionProvider"])
        feed = _data(1)[0]
        got, want = q.run(None, feed)[0], f.run(None, feed)[0]
    cos = float((got * want).sum() / (np.linalg.norm(got) * np.linalg.norm(want)))
    assert cos > 0.995, cos


def test_a_large_batch_is_observed_in_slices_with_the_same_ranges(monkeypatch: object) -> None:
    prepared = prepare(_block())
    graph = prepared.annotate()[0]
    batch = np.concatenate([d["x"] for d in _data(2)])  # 16 samples
    whole = Calibrator(graph, **for_specs(graph))
    whole.observe({"x": batch})
    monkeypatch.setattr(calibrate, "FETCH_BUDGET_BYTES", 3 * 12 * 12 * 4 * 20)  # type: ignore[attr-defined]
    sliced = Calibrator(graph, **for_specs(graph))
    assert sliced.batch_splits
    assert sliced.observe({"x": batch}, outputs=False) == []
    assert sliced.samples == whole.samples == 16
    assert sliced.sample_bytes is not None and calibrate.FETCH_BUDGET_BYTES // sliced.sample_bytes < 16
    for name, obs in whole.minmax.items():
        np.testing.assert_array_equal(sliced.minmax[name].range(), obs.range())


def test_a_fixed_batch_model_is_never_sliced() -> None:
    prepared = prepare(_block(batch=8))
    graph = prepared.annotate()[0]
    assert not Calibrator(graph, **for_specs(graph)).batch_splits
