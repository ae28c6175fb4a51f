"""Weight-only RTN math against INC's formulas (neural-compressor-and-gaudi-fp8.md §4), hand-computed, and the
MatMulNBits packing order (onnxruntime-quantization.md §5). numpy only: no runtime is loaded."""

from __future__ import annotations

import numpy as np
import pytest

from quantir.backends.onnx_qdq.matmul_nbits import blockable, pack_matmul_nbits
from quantir.compiler.config.weight_only_config import RTNConfig
from quantir.compiler.qparams.weight_only import rtn_qtype
from quantir.ir import DType, GranularityKind, Scheme
from quantir.ir.errors import ConfigError
from quantir.ir.quant_math import fake_quantize, quantize

# K = 4 (two groups of 2 along axis 0), N = 2
W = np.array([[0.7, -0.2], [-0.35, 0.1], [1.4, 0.0], [0.0, -0.6]], dtype=np.float32)


def test_symmetric_int4_groups_along_k() -> None:
    q = rtn_qtype(W, axis=0, group_size=2, bits=4, sym=True)
    assert (q.dtype, q.scheme, q.qmin, q.qmax) == (DType.I4, Scheme.SYM, -8, 7)
    assert q.granularity.kind is GranularityKind.PER_GROUP and q.granularity.axis == 0
    # s = max|w| / (2^(b-1) - 1) per (group, column)
    np.testing.assert_allclose(q.scale, np.array([[0.7 / 7, 0.2 / 7], [1.4 / 7, 0.6 / 7]], np.float32), rtol=1e-6)
    assert not q.zero_point.any()
    np.testing.assert_array_equal(quantize(W, q), [[7, -7], [-4, 4], [7, 0], [0, -7]])  # -3.5 -> -4 (half to even)


def test_asymmetric_range_includes_zero() -> None:
    q = rtn_qtype(W, axis=0, group_size=2, bits=4, sym=False)
    assert (q.dtype, q.scheme, q.qmin, q.qmax) == (DType.U4, Scheme.ASYM, 0, 15)
    lo = np.array([[-0.35, -0.2], [0.0, -0.6]])
    hi = np.array([[0.7, 0.1], [1.4, 0.0]])
    scale = (hi - lo) / 15
    np.testing.assert_allclose(q.scale, scale, rtol=1e-6)
    np.testing.assert_array_equal(q.zero_point, np.rint(-lo / scale))  # zp = round(-min / s)
    assert fake_quantize(np.zeros((4, 2), np.float32), q).max() == 0  # zero is exact


def test_full_range_puts_the_extreme_on_the_extra_code() -> None:
    q = rtn_qtype(W, axis=0, group_size=2, bits=4, sym=True, full_range=True)
    # s = max|w| / 2^(b-1); INC flips the scale's sign where |max| > |min|: stored as zero point 7 instead of 8
    np.testing.assert_allclose(q.scale, np.array([[0.7 / 8, 0.2 / 8], [1.4 / 8, 0.6 / 8]], np.float32), rtol=1e-6)
    np.testing.assert_array_equal(q.zero_point, [[7, 8], [7, 8]])
    np.testing.assert_allclose(fake_quantize(W, q)[[0, 0, 2, 3], [0, 1, 0, 1]], [0.7, -0.2, 1.4, -0.6], rtol=1e-6)


def test_a_group_size_that_does_not_divide_k_leaves_a_shorter_last_group() -> None:
    w = np.arange(10 * 3, dtype=np.float32).reshape(10, 3) - 12
    q = rtn_qtype(w, axis=0, group_size=4, bits=8, sym=True)
    assert q.scale.shape == (3, 3)  # ceil(10 / 4) groups
    np.testing.assert_allclose(q.scale[2], np.abs(w[8:]).max(axis=0) / 127, rtol=1e-6)
    per_channel = rtn_qtype(w, axis=0, group_size=-1, bits=8, sym=True)  # INC's group_size=-1
    assert per_channel.scale.shape == (1, 3) and per_channel.granularity.group_size == 10


def test_groups_along_the_other_axis() -> None:
    q = rtn_qtype(W, axis=1, group_size=2, bits=4, sym=True)
    assert q.scale.shape == (4, 1)
    np.testing.assert_allclose(q.scale[:, 0], np.abs(W).max(axis=1) / 7, rtol=1e-6)


def test_matmul_nbits_packs_two_codes_per_byte_low_nibble_first() -> None:
    q = np.arange(-8, 8, dtype=np.int8).repeat(2).reshape(32, 1)  # K = 32, N = 1
    packed, zps = pack_matmul_nbits(q, np.zeros((1, 1), np.int8), DType.I4, 32)
    assert packed.shape == (1, 1, 16) and zps is None  # symmetric: ORT's default zero point 8
    codes = q[:, 0].astype(np.int64) + 8
    assert packed[0, 0, 0] == codes[0] | (codes[1] << 4) and packed[0, 0, 15] == codes[30] | (codes[31] << 4)
    # asymmetric: zero points packed two blocks per byte, even block low
    uq = np.tile(np.arange(16, dtype=np.uint8), 4).reshape(64, 1)
    packed, zps = pack_matmul_nbits(uq, np.array([[3], [12]], np.uint8), DType.U4, 32)
    assert packed.shape == (1, 2, 16) and zps is not None and zps.tolist() == [[3 | (12 << 4)]]


def test_matmul_nbits_blocks() -> None:
    assert blockable(384, 32) == 32 and blockable(384, 128) == 128
    assert blockable(384, 48) is None  # not a power of two
    assert blockable(384, 384) == 512 and blockable(10, 10) == 16  # one group per channel: padded block


def test_rtn_config_has_inc_defaults_and_expands_in_signature_order() -> None:
    cfg = RTNConfig()
    assert (cfg.dtype, cfg.bits, cfg.use_sym, cfg.group_size, cfg.group_dim) == ("int", 4, True, 32, 1)
    assert (cfg.use_full_range, cfg.use_mse_search, cfg.quant_lm_head) == (False, False, False)
    seed = RTNConfig(use_sym=[False, True], group_size=[32, 128])
    assert seed.tunable and not cfg.tunable
    assert [(c.use_sym, c.group_size) for c in seed.expand()] == [(False, 32), (False, 128), (True, 32), (True, 128)]
    assert list(cfg.local_config) == [".*lm_head", ".*output_layer", ".*embed_out"]  # INC's fp32 LM-head locals
    assert not RTNConfig(quant_lm_head=True).local_config


def test_rtn_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"RTNConfig.group_size=0: expected an int >= 1 or -1"):
        RTNConfig(group_size=[32, 0])
    with pytest.raises(ConfigError, match=r"the config must be an RTNConfig"):
        RTNConfig().set_local("fc1", object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"quant_lm_head is set on the global config only"):
        RTNConfig().set_local("fc1", RTNConfig(quant_lm_head=True))
    with pytest.raises(ConfigError, match=r"algorithm='GPTQ': an RTNConfig runs RTN"):
        RTNConfig(op_type_dict={"MatMul": {"weight": {"algorithm": "GPTQ"}}})


def test_rtn_config_dict_form_round_trips() -> None:
    cfg = RTNConfig(bits=8, use_sym=False).set_local("fc2", RTNConfig(dtype="fp32"))
    data = cfg.to_dict()
    assert data["rtn"]["global"]["bits"] == 8 and data["rtn"]["local"] == {"fc2": {"dtype": "fp32"}}
    back = RTNConfig.from_dict(data)
    assert back.to_dict() == data and back.local_config["fc2"].dtype == "fp32"


def test_gptq_with_an_identity_hessian_is_round_to_nearest() -> None:
    from quantir.compiler.passes.weight_only_gptq import gptq_quantize

    w = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    q, qtype = gptq_quantize(w, np.eye(64), bits=4, sym=True, group_size=16, percdamp=0.01, block_size=32)
    rtn = rtn_qtype(w, axis=0, group_size=16, bits=4, sym=True)
    np.testing.assert_allclose(q, fake_quantize(w, rtn), rtol=1e-6, atol=1e-7)  # no correlation: no feedback
    np.testing.assert_allclose(qtype.scale, rtn.scale, rtol=1e-6)
    np.testing.assert_array_equal(quantize(q, qtype), quantize(w, rtn))  # the weights sit on the type's grid


def test_gptq_lowers_the_layer_output_error_on_correlated_inputs() -> None:
    from quantir.compiler.calibration.hessian import HessianObserver
    from quantir.compiler.passes.weight_only_gptq import gptq_quantize

    rng = np.random.default_rng(1)
    x = rng.standard_normal((512, 64)) @ rng.standard_normal((64, 64))  # correlated input channels
    w = rng.standard_normal((64, 16)).astype(np.float32)
    obs = HessianObserver("x")
    for rows in np.array_split(x.astype(np.float32), 4):  # streamed in batches
        obs.update(rows)
    h = obs.hessian()
    np.testing.assert_allclose(h, 2 * x.T @ x / 512, rtol=1e-4)
    for act_order in (False, True):
        q, qtype = gptq_quantize(w, h, bits=4, sym=True, group_size=32, act_order=act_order, block_size=16)
        rtn = fake_quantize(w, rtn_qtype(w, axis=0, group_size=32, bits=4, sym=True))
        gptq_err, rtn_err = np.linalg.norm(x @ (q - w)), np.linalg.norm(x @ (rtn - w))
        assert gptq_err < 0.8 * rtn_err, (act_order, gptq_err, rtn_err)
        np.testing.assert_array_equal(fake_quantize(q, qtype), q)  # on the grid: emitted codes are GPTQ's


def test_weight_only_and_dynamic_types_round_trip_through_the_text_form() -> None:
    from quantir.ir import Graph, Node, Tensor, TensorType, Value, parse, print_graph, structurally_equal
    from quantir.ir.types import DYNAMIC_OBSERVER, Granularity, QuantSpec

    g = Graph("m", opset_imports={"": 21})
    x = Value("x", TensorType(DType.F32, ("N", 4)))
    x.quant = QuantSpec(DType.U8, Scheme.ASYM, Granularity.per_tensor(), DYNAMIC_OBSERVER)
    w = g.add_constant("w", Tensor.from_numpy(W, DType.F32))
    w.quant = rtn_qtype(W, axis=0, group_size=2, bits=4, sym=False)
    y = Value("y", TensorType(DType.F32, ("N", 2)))
    g.inputs, g.outputs = [x], [y]
    g.append(Node("MatMul", [x, w], [y], name="fc"))
    text = print_graph(g)
    assert "observer=dynamic" in text and "per_group(0, 2)" in text and "u4 asym" in text, text
    again = parse(text)
    assert structurally_equal(again, g) and print_graph(again) == text
