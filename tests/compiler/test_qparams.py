"""Golden tests for compiler/qparams/scales.py: every number is hand-computed from the formulas in ../shared/reference/,
then cross-checked against the real onnxruntime and torch code where those are installed."""

from __future__ import annotations

import numpy as np
import pytest

from quantir.compiler.qparams.scales import (
    Convention,
    adjust_weight_scale_for_bias,
    bias_qparams,
    compute_fp8_scale,
    compute_qparams,
    dequantize,
    fake_quantize,
    fake_quantize_bounds,
    fp8_fullscale,
    quant_range,
    quantize,
    unify_ranges,
)
from quantir.ir import DType, Granularity, PassError, QuantSpec, QuantType, Scheme

ORT, PT, IPEX, OV, TF = Convention.ORT, Convention.PYTORCH, Convention.IPEX, Convention.OPENVINO, Convention.TENSORFLOW
SYM, ASYM = Scheme.SYM, Scheme.ASYM
U8, I8 = DType.U8, DType.I8
NO_REDUCE = "has no reduce_range"


def qp(rmin: object, rmax: object, spec: QuantSpec, conv: Convention = ORT, reduce: bool = False) -> QuantType:
    return compute_qparams(np.asarray(rmin, np.float32), np.asarray(rmax, np.float32), spec, convention=conv,
                           reduce_range=reduce)  # fmt: skip


def check(q: QuantType, scale: object, zp: object, qmin: int, qmax: int) -> None:
    np.testing.assert_allclose(q.scale, np.asarray(scale, np.float64), rtol=1e-6)
    np.testing.assert_array_equal(q.zero_point, zp)
    assert (q.qmin, q.qmax) == (qmin, qmax)


# Range [-2, 6] through every convention x scheme x dtype x reduce_range: (scale, zp, qmin, qmax) or an error.
GOLDEN = [
    # ORT: include 0, symmetric = ±absmax, scale = (rmax - rmin)/(qmax - qmin), zp = round(qmin - rmin/scale)
    (ORT, SYM, U8, False, (12 / 255, 128, 0, 255)),  # [-6,6]: 12/255 = 0.047058824, zp round(127.5) = 128
    (ORT, SYM, U8, True, (12 / 127, 64, 0, 127)),  # 12/127 = 0.094488189, zp round(63.5) = 64
    (ORT, SYM, I8, False, (12 / 254, 0, -127, 127)),  # 12/254 = 0.047244094
    (ORT, SYM, I8, True, (12 / 128, 0, -64, 64)),  # 12/128 = 0.09375
    (ORT, ASYM, U8, False, (8 / 255, 64, 0, 255)),  # 8/255 = 0.031372549, zp round(0 + 63.75) = 64
    (ORT, ASYM, U8, True, (8 / 127, 32, 0, 127)),  # 8/127 = 0.062992126, zp round(31.75) = 32
    (ORT, ASYM, I8, False, (8 / 255, -64, -128, 127)),  # zp round(-128 + 63.75) = -64
    (ORT, ASYM, I8, True, (8 / 128, -32, -64, 64)),  # 8/128 = 0.0625, zp round(-64 + 32) = -32
    # PyTorch: sym S = max|r|/((qmax-qmin)/2), asym S = (rmax-rmin)/(qmax-qmin), Z = qmin - round(rmin/S)
    (PT, SYM, U8, False, (6 / 127.5, 128, 0, 255)),  # 6/127.5 = 0.047058824, zp 128
    (PT, SYM, U8, True, "cannot reduce the range of symmetric"),  # torch raises NotImplementedError too
    (PT, SYM, I8, False, (6 / 127.5, 0, -128, 127)),  # full range, 6/127.5 = 0.047058824
    (PT, SYM, I8, True, (6 / 63.5, 0, -64, 63)),  # qmin//2, qmax//2 = -64..63: 6/63.5 = 0.094488189
    (PT, ASYM, U8, False, (8 / 255, 64, 0, 255)),  # Z = 0 - round(-63.75) = 64
    (PT, ASYM, U8, True, (8 / 127, 32, 0, 127)),  # Z = 0 - round(-31.75) = 32
    (PT, ASYM, I8, False, (8 / 255, -64, -128, 127)),  # Z = -128 - round(-63.75) = -64
    (PT, ASYM, I8, True, (8 / 127, -32, -64, 63)),  # 8/127 = 0.062992126, Z = -64 - round(-31.75) = -32
    # IPEX calibrates with torch's observers: same numbers
    (IPEX, SYM, U8, False, (6 / 127.5, 128, 0, 255)),
    (IPEX, SYM, U8, True, "cannot reduce the range of symmetric"),
    (IPEX, SYM, I8, False, (6 / 127.5, 0, -128, 127)),
    (IPEX, SYM, I8, True, (6 / 63.5, 0, -64, 63)),
    (IPEX, ASYM, U8, False, (8 / 255, 64, 0, 255)),
    (IPEX, ASYM, U8, True, (8 / 127, 32, 0, 127)),
    (IPEX, ASYM, I8, False, (8 / 255, -64, -128, 127)),
    (IPEX, ASYM, I8, True, (8 / 127, -32, -64, 63)),
    # TensorFlow (INC): int8 S = 2·max|r|/(qmax-qmin-1), uint8 S = max(rmin, rmax)/(qmax-qmin); symmetric only
    (TF, SYM, U8, False, (6 / 255, 0, 0, 255)),  # 6/255 = 0.023529412
    (TF, SYM, U8, True, NO_REDUCE),
    (TF, SYM, I8, False, (12 / 254, 0, -128, 127)),  # 2·6/254 = 0.047244094
    (TF, SYM, I8, True, NO_REDUCE),
    (TF, ASYM, U8, False, "symmetric only"),
    (TF, ASYM, U8, True, NO_REDUCE),
    (TF, ASYM, I8, False, "symmetric only"),
    (TF, ASYM, I8, True, NO_REDUCE),
    # OpenVINO (NNCF): sym signed FQ [-6·256/254, 6] over 256 levels -> (6 + 6·256/254)/255 = 6/127; unsigned
    # [0, 6] -> 6/255; asym tune_range: q = round(2·255/8 = 63.75) = 64, low -> 64/(64-255)·6 = -2.0104712 is
    # wider than high -> 191/64·2 = 5.96875, so [-2.0104712, 6]: 8.0104712/255 = 6/191 = 0.031413613, zp 64
    (OV, SYM, U8, False, (6 / 255, 0, 0, 255)),
    (OV, SYM, U8, True, NO_REDUCE),
    (OV, SYM, I8, False, (6 / 127, 0, -128, 127)),
    (OV, SYM, I8, True, NO_REDUCE),
    (OV, ASYM, U8, False, (6 / 191, 64, 0, 255)),
    (OV, ASYM, U8, True, NO_REDUCE),
    (OV, ASYM, I8, False, (6 / 191, -64, -128, 127)),  # zp -128 + 64
    (OV, ASYM, I8, True, NO_REDUCE),
]


@pytest.mark.parametrize(("conv", "scheme", "dtype", "reduce", "want"), GOLDEN)
def test_golden_conventions(conv: Convention, scheme: Scheme, dtype: DType, reduce: bool, want: object) -> None:
    spec = QuantSpec(dtype, scheme)
    if isinstance(want, str):
        with pytest.raises(PassError, match=want):
            qp(-2.0, 6.0, spec, conv, reduce)
        return
    assert isinstance(want, tuple)
    q = qp(-2.0, 6.0, spec, conv, reduce)
    check(q, *want)
    assert (
        q.scale.dtype == np.float32
        and q.zero_point.dtype == np.int32
        and q.spec == QuantSpec(dtype, scheme, qmin=q.qmin, qmax=q.qmax)
    )


def test_openvino_narrow_weights_use_255_levels() -> None:
    q = qp(-2.0, 6.0, QuantSpec(I8, SYM, qmin=-127), OV)  # FQ [-6, 6], 255 levels: 12/254
    check(q, 12 / 254, 0, -127, 127)
    low, high, levels = fake_quantize_bounds(q)
    np.testing.assert_allclose([low, high], [-6.0, 6.0], rtol=1e-6)
    assert levels == 255


def test_openvino_bounds_match_nncf_tune_range() -> None:
    low, high, levels = fake_quantize_bounds(qp(-2.0, 6.0, QuantSpec(U8, ASYM), OV))
    np.testing.assert_allclose([low, high], [-6 * 64 / 191, 6.0], rtol=1e-6)  # -2.0104712, 6
    assert levels == 256
    low, high, levels = fake_quantize_bounds(qp(-2.0, 6.0, QuantSpec(I8, SYM), OV))  # [-6·128/127, 6]
    np.testing.assert_allclose([low, high], [-6 * 128 / 127, 6.0], rtol=1e-6)
    assert levels == 256


def test_openvino_zero_filters() -> None:
    spec = QuantSpec(I8, SYM, Granularity.per_channel(0))
    q = qp([-1.0, 0.0], [1.0, 0.0], spec, OV)  # zero channel -> max(0.01·1, 8e-5) = 0.01: 0.01/127
    check(q, [1 / 127, 0.01 / 127], [0, 0], -128, 127)
    # widened by 8e-4 each side: [-8e-4, 8e-4]; tune_range: q = round(127.5) = 128, the low border moves to
    # 128/(128-255)·8e-4 = -8.0629921e-4 (wider than moving the high one to 127/128·8e-4)
    q = qp(0.0, 0.0, QuantSpec(U8, ASYM), OV)
    np.testing.assert_allclose(fake_quantize_bounds(q)[:2], [-8e-4 * 128 / 127, 8e-4], rtol=1e-5)


@pytest.mark.parametrize(
    ("dtype", "sym", "reduce", "narrow", "want"),
    [
        (U8, False, False, False, (0, 255)), (U8, True, False, False, (0, 255)),
        (U8, False, True, False, (0, 127)), (I8, False, False, False, (-128, 127)),
        (I8, True, False, False, (-127, 127)), (I8, True, True, False, (-64, 64)),
        (I8, False, False, True, (-127, 127)), (U8, False, False, True, (0, 254)),
        (DType.U4, False, False, False, (0, 15)), (DType.U4, True, True, False, (0, 7)),
        (DType.I4, True, False, False, (-8, 7)), (DType.I4, False, True, False, (-4, 3)),
        (DType.I4, True, False, True, (-7, 7)),
        (DType.U16, False, False, False, (0, 65535)), (DType.U16, False, True, False, (0, 32767)),
        (DType.I16, True, False, False, (-32767, 32767)), (DType.I16, True, True, False, (-16384, 16384)),
        (DType.I16, False, False, False, (-32768, 32767)),
    ],
)  # fmt: skip
def test_quant_range(dtype: DType, sym: bool, reduce: bool, narrow: bool, want: tuple[int, int]) -> None:
    assert quant_range(dtype, symmetric=sym, reduce_range=reduce, narrow=narrow) == want


def test_quant_range_errors() -> None:
    with pytest.raises(PassError, match="reduce_range is defined for"):
        quant_range(DType.I32, symmetric=True, reduce_range=True)
    with pytest.raises(PassError, match="no integer range"):
        quant_range(DType.F8E4M3FN, symmetric=True, reduce_range=False)


def test_per_channel_with_degenerate_channel() -> None:
    sym = QuantSpec(I8, SYM, Granularity.per_channel(0))
    # ch0 [-1,1]: 2/254; ch1 all zero: scale 1 zp 0 (ORT's tiny rule); ch2 [0.5,2] -> [-2,2]: 4/254
    check(qp([-1.0, 0.0, 0.5], [1.0, 0.0, 2.0], sym), [2 / 254, 1.0, 4 / 254], [0, 0, 0], -127, 127)
    asym = QuantSpec(U8, ASYM, Granularity.per_channel(0))
    # ch0: 2/255, zp round(127.5) = 128; ch1: 1, 0; ch2 [0,2]: 2/255, zp 0
    check(qp([-1.0, 0.0, 0.5], [1.0, 0.0, 2.0], asym), [2 / 255, 1.0, 2 / 255], [128, 0, 0], 0, 255)
    # PyTorch clamps the scale at float32 eps instead: 1/127.5, 1.1920929e-07, 2/127.5
    check(qp([-1.0, 0.0, 0.5], [1.0, 0.0, 2.0], sym, PT), [1 / 127.5, 2.0**-23, 2 / 127.5], [0, 0, 0], -128, 127)


def test_include_zero_when_rmin_positive() -> None:
    check(qp(1.0, 3.0, QuantSpec(U8, ASYM)), 3 / 255, 0, 0, 255)  # [0,3]: 3/255 = 0.011764706
    check(qp(1.0, 3.0, QuantSpec(I8, SYM)), 6 / 254, 0, -127, 127)  # [-3,3]: 6/254 = 0.023622047
    check(qp(-3.0, -1.0, QuantSpec(U8, ASYM)), 3 / 255, 255, 0, 255)  # [-3,0]: zp round(0 + 255) = 255
    check(qp(1.0, 3.0, QuantSpec(U8, ASYM), PT), 3 / 255, 0, 0, 255)  # torch includes zero as well


def test_zero_point_rounds_half_to_even() -> None:
    # [-1, 101]: scale 102/255 = 0.4, rmin/scale = -2.5: round-half-even gives 2 (half-up would give 3)
    check(qp(-1.0, 101.0, QuantSpec(U8, ASYM)), 0.4, 2, 0, 255)
    check(qp(-1.0, 101.0, QuantSpec(U8, ASYM), PT), 0.4, 2, 0, 255)  # 0 - round(-2.5) = 2
    # [-3, 99]: rmin/scale = -7.5 -> 8
    check(qp(-3.0, 99.0, QuantSpec(U8, ASYM)), 0.4, 8, 0, 255)


def test_int4_and_16_bit() -> None:
    check(qp(-2.0, 6.0, QuantSpec(DType.I4, SYM)), 12 / 15, 0, -8, 7)  # int4 keeps -8..7: 0.8, zp round(-0.5)=0
    check(qp(-2.0, 6.0, QuantSpec(DType.U4, SYM)), 12 / 15, 8, 0, 15)  # zp round(7.5) = 8
    check(qp(-2.0, 6.0, QuantSpec(DType.U4, ASYM)), 8 / 15, 4, 0, 15)  # zp round(3.75) = 4
    check(qp(-2.0, 6.0, QuantSpec(DType.I4, ASYM), reduce=True), 8 / 7, -2, -4, 3)  # zp round(-4 + 1.75) = -2
    check(qp(-2.0, 6.0, QuantSpec(DType.I16, SYM)), 12 / 65534, 0, -32767, 32767)  # 0.00018311106
    check(qp(-2.0, 6.0, QuantSpec(DType.U16, SYM)), 12 / 65535, 32768, 0, 65535)  # zp round(32767.5) = 32768
    check(qp(-2.0, 6.0, QuantSpec(DType.U16, ASYM), reduce=True), 8 / 32767, 8192, 0, 32767)  # round(8191.75)
    check(qp(-2.0, 6.0, QuantSpec(DType.U16, SYM), PT), 6 / 32767.5, 32768, 0, 65535)  # torch uint16: 2**15


def test_explicit_spec_range_wins() -> None:
    check(qp(-2.0, 6.0, QuantSpec(U8, SYM, qmin=0, qmax=127), PT), 6 / 63.5, 63, 0, 127)  # torch: (0+127)//2
    check(qp(-2.0, 6.0, QuantSpec(I8, ASYM, qmin=-127)), 8 / 254, -64, -127, 127)  # round(-127 + 63.5) = -64 (even)
    with pytest.raises(PassError, match="conflicts with the explicit range"):
        qp(-2.0, 6.0, QuantSpec(I8, SYM, qmin=-127), ORT, reduce=True)


# ---- FP8 ------------------------------------------------------------------------------------------------------------

E4, E5 = DType.F8E4M3FN, DType.F8E5M2


@pytest.mark.parametrize(
    ("amax", "dtype", "kw", "want"),
    [
        (3.0, E4, {"scale_set": "arbitrary", "fullscale": 240.0}, 0.0125),  # 3/240
        (3.0, E4, {"scale_set": "pow2", "fullscale": 240.0}, 2.0**-6),  # log2(0.0125) = -6.32 -> 2^-6
        (3.0, E4, {"scale_set": "gaudi2"}, 2.0**-4),  # 3/240, exponent -6 rounded up to a multiple of 4: 1/16
        (1e6, E4, {"scale_set": "gaudi2"}, 16.0),  # 1e6/240 = 4166.7 -> 2^13 -> 2^16 -> clamped to 16
        (1e-6, E4, {"scale_set": "gaudi2"}, 2.0**-8),  # 4.2e-9 -> 2^-27 -> 2^-24 -> clamped to 1/256
        (0.0, E4, {"scale_set": "gaudi2"}, 2.0**-8),  # INC clamps log2(0) = -inf to the smallest HW scale
        (3.0, E4, {"scale_set": "gaudi3"}, 2.0**-7),  # 3/448 = 0.0066964, log2 = -7.22 -> 2^-7
        (1e6, E4, {"scale_set": "gaudi3"}, 128.0),  # 1e6/448 = 2232 -> 2^12 -> clamped to 2^7
        (1e-20, E4, {"scale_set": "gaudi3"}, 2.0**-55),  # clamped to 2^-55 = 2.7755576e-17
        (3.0, E4, {"scale_set": "gaudi3", "backoff": 0.5}, 2.0**-6),  # 3/(448·0.5) = 0.013393, log2 -6.22 -> 2^-6
        (3.0, E4, {"scale_set": "arbitrary", "backoff": 0.5}, 3 / 224),  # 3/(448·0.5) = 0.013392857
        (448.0, E4, {"scale_set": "pow2"}, 1.0),  # an exact power of two stays
        (0.0, E4, {"scale_set": "pow2"}, 1.0),  # degenerate -> 1
        (114688.0, E5, {"scale_set": "arbitrary"}, 2.0),  # 114688/57344
        (100.0, E5, {"scale_set": "pow2"}, 2.0**-9),  # 100/57344 = 0.00174386 -> 2^-9
        (100.0, E5, {"scale_set": "gaudi2"}, 1.0),  # Gaudi2 E5M2 allows only 1
        (3.0, DType.F8E4M3FNUZ, {"scale_set": "arbitrary"}, 0.0125),  # e4m3fnuz max 240
    ],
)
def test_fp8_scales(amax: float, dtype: DType, kw: dict[str, object], want: float) -> None:
    q = compute_fp8_scale(amax, dtype, **kw)  # type: ignore[arg-type]
    np.testing.assert_allclose(q.scale, want, rtol=1e-6)
    assert q.zero_point == 0 and q.zero_point.dtype == np.float32 and q.scheme is SYM


def test_fp8_fullscales_and_errors() -> None:
    assert (fp8_fullscale(E4, "gaudi2"), fp8_fullscale(E4, "gaudi3"), fp8_fullscale(E5, "gaudi2")) == (240, 448, 57344)
    q = compute_fp8_scale(np.array([3.0, 448.0]), E4, granularity=Granularity.per_channel(0))
    np.testing.assert_array_equal(q.scale, [2.0**-7, 1.0])  # pow2: 3/448 -> 2^-7, 448/448 = 1
    with pytest.raises(PassError, match="no hardware-aligned scales"):
        compute_fp8_scale(1.0, DType.F8E4M3FNUZ, scale_set="gaudi3")
    with pytest.raises(PassError, match="one amax"):
        compute_fp8_scale(np.ones(2), E4)
    with pytest.raises(PassError, match="finite"):
        compute_fp8_scale(np.nan, E4)
    with pytest.raises(PassError, match="not an FP8 type"):
        compute_fp8_scale(1.0, I8)


def test_fp8_fake_quantize_grid_and_saturation() -> None:
    q = compute_fp8_scale(224.0, E4, scale_set="arbitrary")  # 224/448 = 0.5
    x = np.array([0.3, 1.0, 300.0, -1000.0], np.float32)
    # x/0.5 = 0.6 -> nearest e4m3 0.625 (grid step 1/16 in [0.5,1)); 2 exact; 600, -2000 saturate to ±448
    np.testing.assert_array_equal(fake_quantize(x, q), [0.3125, 1.0, 224.0, -224.0])
    assert quantize(x, q).dtype == np.uint8
    via_spec = compute_qparams(np.float32(-224.0), np.float32(100.0), QuantSpec(E4))
    np.testing.assert_array_equal(via_spec.scale, q.scale)


# ---- bias -----------------------------------------------------------------------------------------------------------


def _itype(scale: object, gran: Granularity | None = None) -> QuantType:
    s = np.asarray(scale, np.float32)
    return QuantType(I8, SYM, gran or Granularity.per_tensor(), s, np.zeros(s.shape), -127, 127)


def test_bias_qparams() -> None:
    x = QuantType(U8, ASYM, Granularity.per_tensor(), np.asarray(0.02), np.asarray(128), 0, 255)
    w = _itype([0.01, 0.04], Granularity.per_channel(1))  # MatMul B: channel axis 1, bias axis 0
    b = bias_qparams(x, w)
    np.testing.assert_allclose(b.scale, [2e-4, 8e-4], rtol=1e-6)  # 0.02·0.01, 0.02·0.04
    assert b.dtype is DType.I32 and b.granularity == Granularity.per_channel(0) and not b.zero_point.any()
    np.testing.assert_array_equal(quantize(np.array([1.0, -0.5], np.float32), b), [5000, -625])  # 1/2e-4, -.5/8e-4
    assert bias_qparams(x, _itype(0.5)).granularity == Granularity.per_tensor()
    with pytest.raises(PassError, match="FP8 bias"):
        bias_qparams(x, compute_fp8_scale(1.0, E4))


def test_bias_guard_per_channel() -> None:
    x = _itype(1e-4)
    w = _itype([1e-4, 0.5], Granularity.per_channel(0))
    adjusted = adjust_weight_scale_for_bias(w, x, np.array([100.0, 1.0]))
    # ch0: s_x·s_w = 1e-8 < 1.0001·2·100/(2^32 - 2) = 4.6570785e-8 -> s_w = 4.6570785e-8 / 1e-4 = 4.6570787e-4
    # ch1: 5e-5 is far above 1.0001·2·1/(2^32-2) = 4.66e-10: unchanged
    np.testing.assert_allclose(adjusted.scale, [4.6570787e-4, 0.5], rtol=1e-6)
    bias_type = bias_qparams(x, adjusted)
    assert quantize(np.array([100.0, 1.0]), bias_type)[0] < np.iinfo(np.int32).max  # 100/4.6570785e-8 fits int32
    assert adjust_weight_scale_for_bias(w, x, np.array([1e-3, 1.0])) is w


def test_bias_guard_per_tensor() -> None:
    # |b|max = 300: 1.0001·600/(2^32 - 2) = 1.3971236e-7 > 1e-5·1e-5 -> s_w = 1.3971236e-7 / 1e-5 = 0.013971236
    adjusted = adjust_weight_scale_for_bias(_itype(1e-5), _itype(1e-5), np.array([-300.0, 2.0]))
    np.testing.assert_allclose(adjusted.scale, 0.013971236, rtol=1e-6)
    with pytest.raises(PassError, match="does not match"):
        adjust_weight_scale_for_bias(_itype([1.0, 1.0], Granularity.per_channel(0)), _itype(1.0), np.ones(3))


# ---- quantize / dequantize ------------------------------------------------------------------------------------------


def test_round_trip_error_and_clipping() -> None:
    q = qp(-2.0, 6.0, QuantSpec(U8, ASYM))  # s = 8/255, zp 64: grid [-64·s, 191·s] = [-2.0078, 5.9922]
    x = np.linspace(-2.0, 6.0, 1001, dtype=np.float32)
    assert np.abs(fake_quantize(x, q) - x).max() <= float(q.scale) / 2 * (1 + 1e-5)
    np.testing.assert_allclose(fake_quantize(np.array([-10.0, 10.0]), q), [-64 * 8 / 255, 191 * 8 / 255], rtol=1e-6)
    assert quantize(np.array([2.5 * 8 / 255]), q)[0] == 66  # round(2.5) = 2 (half-even), + 64
    assert quantize(x, q).dtype == np.uint8 and dequantize(quantize(x, q), q).dtype == np.float32


def test_per_channel_and_per_group_quantize() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 10)).astype(np.float32)
    q = qp(w.min(axis=0), w.max(axis=0), QuantSpec(I8, SYM, Granularity.per_channel(-1)))
    s = q.scale.reshape(1, 10)
    assert np.all(np.abs(fake_quantize(w, q) - w) <= s / 2 * (1 + 1e-5))
    padded = np.pad(w, ((0, 0), (0, 2)), constant_values=np.nan).reshape(3, 3, 4)  # groups of 4 along axis 1
    g = qp(np.nanmin(padded, axis=2), np.nanmax(padded, axis=2), QuantSpec(I8, SYM, Granularity.per_group(1, 4)))
    assert g.scale.shape == (3, 3)
    s = np.repeat(g.scale, 4, axis=1)[:, :10]
    assert np.all(np.abs(fake_quantize(w, g) - w) <= s / 2 * (1 + 1e-5))
    np.testing.assert_array_equal(quantize(w, g)[:, 8:], np.rint(w[:, 8:] / g.scale[:, 2:3]))
    with pytest.raises(PassError, match="needs scales of shape"):
        quantize(np.zeros((3, 13)), g)  # needs (3, 4) scales


def _fq_formula(x: np.ndarray, low: np.ndarray, high: np.ndarray, levels: int) -> np.ndarray:
    il, ih = low.astype(np.float64), high.astype(np.float64)
    step = (ih - il) / (levels - 1)
    return np.round((np.clip(x, il, ih) - il) / (ih - il) * (levels - 1)) * step + il


def test_fake_quantize_bounds_equivalence() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    wq = qp(w.min(axis=(1, 2, 3)), w.max(axis=(1, 2, 3)), QuantSpec(I8, SYM, Granularity.per_channel(0), qmin=-127), OV)
    low, high, levels = fake_quantize_bounds(wq)
    assert levels == 255 and np.allclose(low, -high)
    fq = _fq_formula(w, low.reshape(4, 1, 1, 1), high.reshape(4, 1, 1, 1), levels)
    np.testing.assert_allclose(fake_quantize(w, wq), fq, atol=1e-6)
    x = rng.uniform(-1.0, 3.0, size=(64,)).astype(np.float32) * 1.2
    for conv in (OV, ORT):
        xq = qp(-1.0, 3.0, QuantSpec(U8, ASYM), conv)
        low, high, levels = fake_quantize_bounds(xq)
        assert levels == 256
        np.testing.assert_allclose(fake_quantize(x, xq), _fq_formula(x, low, high, levels), atol=1e-6)
    with pytest.raises(PassError, match="FakeConvert"):
        fake_quantize_bounds(compute_fp8_scale(1.0, E4))


def test_unify_ranges() -> None:
    lo, hi = unify_ranges([(np.float32(-1.0), np.float32(2.0)), (np.float32(-3.0), np.float32(1.0))])
    assert (float(lo), float(hi)) == (-3.0, 2.0)
    check(qp(lo, hi, QuantSpec(U8, ASYM)), 5 / 255, 153, 0, 255)  # shared type: 5/255, zp round(153) = 153
    lo, hi = unify_ranges([(np.array([0.0, -1.0]), np.array([1.0, 1.0])), (np.array([-2.0, 0.0]), np.zeros(2))])
    np.testing.assert_array_equal([lo, hi], [[-2.0, -1.0], [1.0, 1.0]])
    with pytest.raises(PassError, match="at least one"):
        unify_ranges([])
    with pytest.raises(PassError, match="different shapes"):
        unify_ranges([(np.zeros(2), np.zeros(2)), (np.zeros(3), np.zeros(3))])


@pytest.mark.parametrize(
    ("rmin", "rmax", "gran", "message"),
    [
        (np.nan, 1.0, Granularity.per_tensor(), "range contains NaN"),
        (-1.0, np.inf, Granularity.per_tensor(), "range contains Inf"),
        (2.0, 1.0, Granularity.per_tensor(), "range is inverted"),
        (np.zeros(2), np.zeros(3), Granularity.per_channel(0), "range shapes differ"),
        (np.zeros(2), np.ones(2), Granularity.per_tensor(), "per_tensor range needs shape"),
        (np.zeros((2, 2)), np.ones((2, 2)), Granularity.per_channel(0), "per_channel range needs shape"),
        (0.0, 1.0, Granularity.per_group(0, 4), "per_group range needs blocks"),
    ],
)
def test_invalid_ranges(rmin: object, rmax: object, gran: Granularity, message: str) -> None:
    with pytest.raises(PassError, match=message):
        qp(rmin, rmax, QuantSpec(U8, ASYM, gran))


# ---- cross-checks against the real runtimes -------------------------------------------------------------------------


def _random_ranges(n: int) -> list[tuple[float, float]]:
    rng = np.random.default_rng(42)
    pairs = [tuple(sorted(map(float, rng.normal(scale=10.0 ** rng.uniform(-3, 3), size=2)))) for _ in range(n)]
    return [(a, b) for a, b in pairs] + [(0.0, 0.0), (0.5, 2.0), (-3.0, -1.0), (-1.0, 101.0), (-1e-40, 1e-40)]


ORT_CASES = [(U8, False, False), (I8, True, False), (U8, True, False), (I8, False, True), (U8, False, True)]
TORCH_CASES = [(U8, False, False), (I8, True, False), (U8, True, False), (I8, False, False), (U8, False, True)]


@pytest.mark.parametrize(("dtype", "sym", "reduce"), [*ORT_CASES, (I8, True, True)])
def test_ort_matches_compute_scale_zp(dtype: DType, sym: bool, reduce: bool) -> None:
    import onnx
    import onnxruntime.quantization.quant_utils as quant_utils

    qtype = {U8: onnx.TensorProto.UINT8, I8: onnx.TensorProto.INT8}[dtype]
    qmin, qmax = quant_utils.get_qmin_qmax_for_qType(qtype, reduce_range=reduce, symmetric=sym)
    for rmin, rmax in _random_ranges(30):
        zp, scale = quant_utils.compute_scale_zp(
            np.array(rmin, np.float32), np.array(rmax, np.float32), qmin, qmax, sym
        )
        ours = qp(rmin, rmax, QuantSpec(dtype, SYM if sym else ASYM), ORT, reduce)
        assert (ours.qmin, ours.qmax) == (int(qmin), int(qmax))
        assert ours.scale == np.float32(scale) and int(ours.zero_point) == int(zp), (rmin, rmax)


@pytest.mark.filterwarnings("ignore:Please use quant_min and quant_max:UserWarning")
@pytest.mark.parametrize(("dtype", "sym", "reduce"), [*TORCH_CASES, (I8, True, True)])
def test_pytorch_matches_minmax_observer(dtype: DType, sym: bool, reduce: bool) -> None:
    import torch
    import torch.ao.quantization.observer as observer

    tdtype = {U8: torch.quint8, I8: torch.qint8}[dtype]
    scheme = torch.per_tensor_symmetric if sym else torch.per_tensor_affine
    for rmin, rmax in _random_ranges(30):
        obs = observer.MinMaxObserver(dtype=tdtype, qscheme=scheme, reduce_range=reduce)
        obs(torch.tensor([rmin, rmax], dtype=torch.float32))
        scale, zp = obs.calculate_qparams()
        for conv in (PT, IPEX):
            ours = qp(rmin, rmax, QuantSpec(dtype, SYM if sym else ASYM), conv, reduce)
            assert (ours.qmin, ours.qmax) == (obs.quant_min, obs.quant_max)
            assert ours.scale == np.float32(scale.item()) and int(ours.zero_point) == int(zp.item()), (rmin, rmax)


def test_pytorch_matches_per_channel_observer() -> None:
    import torch
    import torch.ao.quantization.observer as observer

    w = torch.tensor([[-1.0, 1.0, 0.3], [0.0, 0.0, 0.0], [0.5, 2.0, 1.0]])
    obs = observer.PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    obs(w)
    scale, zp = obs.calculate_qparams()
    ours = qp(w.amin(1).numpy(), w.amax(1).numpy(), QuantSpec(I8, SYM, Granularity.per_channel(0)), PT)
    np.testing.assert_array_equal(ours.scale, scale.numpy())  # the zero channel gets float32 eps, not 1
    np.testing.assert_array_equal(ours.zero_point, zp.numpy())
