"""Scale and zero-point conventions of every target runtime, written once (ARCHITECTURE.md §4, step 4).

Each `Convention` turns an observer's range into a `QuantType` exactly as its runtime does; `quantize`,
`dequantize` and `fake_quantize` (from `quantir.ir.quant_math`, re-exported) give a `QuantType` its meaning.
Sources: ../shared/reference/ (ORT §3, INC §3-4, NNCF §1) and the runtimes' own code where those disagree (noted
at each formula).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from quantir.ir.dtypes import DType
from quantir.ir.errors import PassError
from quantir.ir.quant_math import dequantize, fake_quantize, quantize
from quantir.ir.types import Granularity, GranularityKind, QuantSpec, QuantType, Scheme

__all__ = [
    "Convention", "ScaleSet", "adjust_weight_scale_for_bias", "bias_qparams", "compute_fp8_scale", "compute_qparams",
    "dequantize", "fake_quantize", "fake_quantize_bounds", "fp8_fullscale", "quant_range", "quantize", "unify_ranges",
]  # fmt: skip


class Convention(enum.Enum):
    """Whose formulas turn a range into scale and zero point."""

    ORT = "ort"  # onnxruntime quant_utils.compute_scale_zp (also INC's ONNX calculate_scale_zp)
    PYTORCH = "pytorch"  # torch.ao MinMaxObserver._calculate_qparams
    IPEX = "ipex"  # IPEX calibrates with the same torch.ao observers (ipex-and-pt2e.md §1)
    OPENVINO = "openvino"  # NNCF fake_quantize.py: FakeQuantize levels / input_low / input_high
    TENSORFLOW = "tensorflow"  # INC quantization.md, "Quantization Scheme in TensorFlow" (oneDNN)


# ---- integer ranges ------------------------------------------------------------------------------------------------

_ORT_SYMMETRIC: dict[DType, tuple[int, int]] = {DType.I8: (-127, 127), DType.I16: (-32767, 32767)}
_ORT_REDUCED: dict[DType, tuple[int, int]] = {
    DType.U8: (0, 127), DType.I8: (-64, 64), DType.U16: (0, 32767), DType.I16: (-16384, 16384),
    DType.U4: (0, 7), DType.I4: (-4, 3),
}  # fmt: skip


def quant_range(dtype: DType, *, symmetric: bool, reduce_range: bool, narrow: bool = False) -> tuple[int, int]:
    """ONNX Runtime's (qmin, qmax) for `dtype` (quant_utils.get_qmin_qmax_for_qType).

    Full range; symmetric s8/s16 drop the lowest code (±127, ±32767) while int4 keeps -8..7; reduce_range (7-bit
    weights for CPUs without VNNI) wins over both. `narrow` makes a signed range symmetric (-127..127, OpenVINO's
    255-level weights) and drops the top code of an unsigned one (NNCF's narrow levels). Other conventions differ:
    PyTorch halves the full range (s8 -64..63, not ORT's -64..64) and never narrows for symmetric; TensorFlow and
    OpenVINO keep the full range (`compute_qparams` applies each convention's own rule).
    """
    if not dtype.is_integer:
        raise PassError(f"{dtype} has no integer range; float storage is scaled by compute_fp8_scale")
    if reduce_range:
        if dtype not in _ORT_REDUCED:
            raise PassError(f"reduce_range is defined for u8/s8/u16/s16/u4/s4, not {dtype}")
        return _ORT_REDUCED[dtype]
    lo, hi = _ORT_SYMMETRIC.get(dtype, dtype.int_range) if symmetric else dtype.int_range
    if narrow:
        return (-hi, hi) if lo < 0 else (lo, hi - 1)
    return lo, hi


def _torch_range(dtype: DType, symmetric: bool, reduce_range: bool) -> tuple[int, int]:
    lo, hi = dtype.int_range
    if not reduce_range:
        return lo, hi
    if symmetric and lo == 0:  # torch raises too: its zero point 128 would leave [0, 127]
        raise PassError(f"PyTorch cannot reduce the range of symmetric {dtype}; use asymmetric or reduce_range=False")
    return lo // 2, hi // 2  # observer.py: quant_min // 2, quant_max // 2 (s8 -64..63, u8 0..127)


_NO_REDUCED_RANGE: dict[Convention, str] = {
    Convention.TENSORFLOW: "TensorFlow defines no reduced range",
    Convention.OPENVINO: "OpenVINO's half-range overflow fix is a backend rewrite, not a range",
}
_DEFAULT_RANGE: dict[Convention, Callable[[DType, bool, bool], tuple[int, int]]] = {
    Convention.ORT: lambda dt, sym, red: quant_range(dt, symmetric=sym, reduce_range=red),
    Convention.PYTORCH: _torch_range,
    Convention.IPEX: _torch_range,
    Convention.TENSORFLOW: lambda dt, sym, red: dt.int_range,
    Convention.OPENVINO: lambda dt, sym, red: dt.int_range,
}


def _resolve_range(spec: QuantSpec, convention: Convention, reduce_range: bool) -> tuple[int, int, bool]:
    """(qmin, qmax, explicit): a spec range narrower than its dtype is explicit and wins over the convention."""
    assert spec.qmin is not None and spec.qmax is not None
    if reduce_range and convention in _NO_REDUCED_RANGE:
        raise PassError(f"{convention.name} has no reduce_range: {_NO_REDUCED_RANGE[convention]}; use ORT or PYTORCH")
    if (spec.qmin, spec.qmax) == spec.dtype.int_range:
        return (*_DEFAULT_RANGE[convention](spec.dtype, spec.scheme is Scheme.SYM, reduce_range), False)
    if reduce_range:
        raise PassError(f"reduce_range conflicts with the explicit range [{spec.qmin}, {spec.qmax}] of the spec")
    return spec.qmin, spec.qmax, True


# ---- the formulas, one per convention --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Problem:
    lo: np.ndarray  # observed minimum, float32
    hi: np.ndarray  # observed maximum, float32
    qmin: int
    qmax: int
    dtype: DType
    explicit_range: bool


_Params: TypeAlias = tuple[np.ndarray, np.ndarray]  # (scale float32, zero point float, rounded)
_F32_TINY = float(np.finfo(np.float32).tiny)
_F32_EPS = np.float32(np.finfo(np.float32).eps)


def _include_zero(p: _Problem) -> tuple[np.ndarray, np.ndarray]:
    return np.minimum(p.lo, np.float32(0)), np.maximum(p.hi, np.float32(0))


def _unit_if_degenerate(scale: np.ndarray, zp: np.ndarray) -> _Params:
    """ORT: a scale below float32 tiny becomes scale 1, zero point 0."""
    tiny = scale < _F32_TINY
    return np.where(tiny, 1.0, scale).astype(np.float32), np.where(tiny, 0.0, zp)


def _ort(p: _Problem, symmetric: bool) -> _Params:
    lo, hi = _include_zero(p)
    if symmetric:
        hi = np.maximum(np.abs(lo), np.abs(hi))
        lo = -hi
    scale = (hi.astype(np.float64) - lo.astype(np.float64)) / float(p.qmax - p.qmin)  # float64, cast at the end
    if symmetric:  # independent of the scale, so all channels share it (QLinearConv needs that)
        zp = np.full(scale.shape, np.round((p.qmin + p.qmax) / 2.0))
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            zp = np.round(p.qmin - lo / scale)  # np.round is half-to-even, as in ORT
    return _unit_if_degenerate(scale, zp)


def _torch_symmetric_zero_point(p: _Problem) -> int:
    if p.qmin < 0:
        return 0
    if p.explicit_range:  # "customized qrange": the down-rounded midpoint
        return (p.qmin + p.qmax) // 2
    return 2 ** (p.dtype.bits - 1)  # 128 for quint8, 2**15 for uint16


def _torch(p: _Problem, symmetric: bool) -> _Params:
    # Real torch behaviour, all float32: S = max|r| / ((qmax - qmin) / 2) (INC's "127.5"), clamped below at
    # float32 eps (not ORT's scale-1 rule); asymmetric Z = qmin - round(rmin / S), clamped to [qmin, qmax].
    lo, hi = _include_zero(p)
    if symmetric:
        amax = np.maximum(-lo, hi)
        scale = np.maximum(amax / np.float32((p.qmax - p.qmin) / 2), _F32_EPS)
        return scale, np.full(scale.shape, float(_torch_symmetric_zero_point(p)))
    scale = np.maximum((hi - lo) / np.float32(p.qmax - p.qmin), _F32_EPS)
    return scale, np.clip(p.qmin - np.round(lo / scale), p.qmin, p.qmax)


def _tensorflow(p: _Problem, symmetric: bool) -> _Params:
    # INC's per-framework table for TF (oneDNN scale quantization). The same doc's "Fundamentals" section contradicts
    # it (int8 affine divided by 127, uint8 symmetric amax/255 with Z=128, which would clip half the range); the
    # tables agree with the runtimes' code for ORT and torch, so we follow the table here too.
    if not symmetric:
        raise PassError("the TENSORFLOW convention is symmetric only (INC's TF scheme has no asymmetric formula)")
    if p.qmin < 0:  # S = 2·max|r| / (qmax - qmin - 1), i.e. max|r| / qmax: -128 stays unused
        scale = np.maximum(np.abs(p.lo), np.abs(p.hi)).astype(np.float64) / p.qmax
    else:  # unsigned: S = max(rmin, rmax) / (qmax - qmin), Z = 0; negative values clip to 0
        scale = np.maximum(p.lo, p.hi).astype(np.float64) / (p.qmax - p.qmin)
    return _unit_if_degenerate(scale, np.zeros(scale.shape))


def _nncf_tune_range(lo: np.ndarray, hi: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """NNCF tune_range: move one border so that 0.0 falls on the grid; keep whichever choice is wider."""
    q = np.round(-lo * (np.float32(n) / (hi - lo)))
    with np.errstate(divide="ignore", invalid="ignore"):
        new_lo = np.where(q < n, q / (q - n) * hi, lo)
        new_hi = np.where(q > 0, (q - n) / q * lo, hi)
    move_low = (hi - new_lo) > (new_hi - lo)
    return np.where(move_low, new_lo, lo), np.where(move_low, hi, new_hi)


def _openvino(p: _Problem, symmetric: bool) -> _Params:
    if symmetric:
        # fix_zero_filters_symmetric, then FQ [-amax·L/(L-2), amax] (L=256) or [-amax, amax] (narrow, L=255) for
        # signed, [0, amax] for unsigned. Either way (ih - il) / (L - 1) = amax / qmax and the grid holds 0 at zp 0.
        amax = np.maximum(np.abs(p.lo), np.abs(p.hi))
        amax = np.maximum(amax, np.float32(max(float(amax.max()) * 0.01, 8e-5)))
        return (amax / np.float32(p.qmax)).astype(np.float32), np.zeros(amax.shape)
    # fix_zero_filters_asymmetric (widen ranges under 8e-4 by 8e-4 each side), include zero, then tune_range.
    widen = np.where(p.hi - p.lo > 8e-4, 0, 8e-4).astype(np.float32)
    lo, hi = np.minimum(p.lo - widen, np.float32(0)), np.maximum(p.hi + widen, np.float32(0))
    lo, hi = _nncf_tune_range(lo, hi, p.qmax - p.qmin)
    scale = ((hi - lo) / np.float32(p.qmax - p.qmin)).astype(np.float32)
    return scale, np.clip(np.round(p.qmin - lo / scale), p.qmin, p.qmax)


_FORMULAS: dict[Convention, Callable[[_Problem, bool], _Params]] = {
    Convention.ORT: _ort,
    Convention.PYTORCH: _torch,
    Convention.IPEX: _torch,  # INC's doc gives IPEX 2·max|r|/254; IPEX really runs torch's observers
    Convention.TENSORFLOW: _tensorflow,
    Convention.OPENVINO: _openvino,
}


def _validated_range(rmin: npt.ArrayLike, rmax: npt.ArrayLike, g: Granularity) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(over="ignore"):
        lo, hi = np.asarray(rmin, dtype=np.float32), np.asarray(rmax, dtype=np.float32)
    if lo.shape != hi.shape:
        raise PassError(f"range shapes differ: rmin {lo.shape} vs rmax {hi.shape}")
    for name, arr in (("rmin", lo), ("rmax", hi)):
        if np.isnan(arr).any():
            raise PassError(f"range contains NaN ({name}); the observer saw NaN values or no data")
        if np.isinf(arr).any():
            raise PassError(f"range contains Inf ({name}); clip the tensor or use a percentile observer")
    if (lo > hi).any():
        at = np.argwhere(lo > hi)[0].tolist()
        raise PassError(f"range is inverted: rmin > rmax at {at} ({lo[tuple(at)]} > {hi[tuple(at)]})")
    if g.kind is GranularityKind.PER_TENSOR and lo.size == 1:
        return lo.reshape(()), hi.reshape(())
    if (g.kind is GranularityKind.PER_CHANNEL and lo.ndim == 1) or (g.kind is GranularityKind.PER_GROUP and lo.ndim):
        return lo, hi
    want = {GranularityKind.PER_TENSOR: "shape ()", GranularityKind.PER_CHANNEL: "shape (C,)"}.get(g.kind, "blocks")
    raise PassError(f"{g.kind.value} range needs {want}, found shape {lo.shape}")


def compute_qparams(
    rmin: npt.ArrayLike,
    rmax: npt.ArrayLike,
    spec: QuantSpec,
    *,
    convention: Convention = Convention.ORT,
    reduce_range: bool = False,
) -> QuantType:
    """Scale and zero point for an observed range: shape () per tensor, (C,) per channel, blocked per group.

    The integer range is the convention's default for the dtype (e.g. ORT symmetric s8 is ±127) unless the spec
    sets a narrower one, which then wins (e.g. `QuantSpec(I8, qmin=-127)` for OpenVINO's 255-level weights).
    Float storage (FP8) takes max|r| / fullscale, `compute_fp8_scale` with scale_set="arbitrary".
    """
    lo, hi = _validated_range(rmin, rmax, spec.granularity)
    if spec.dtype.is_float:
        if reduce_range:
            raise PassError(f"reduce_range does not apply to {spec.dtype}")
        amax = np.maximum(np.abs(lo), np.abs(hi))
        return compute_fp8_scale(
            amax, spec.dtype, scale_set="arbitrary", granularity=spec.granularity, observer=spec.observer
        )
    qmin, qmax, explicit = _resolve_range(spec, convention, reduce_range)
    scale, zp = _FORMULAS[convention](_Problem(lo, hi, qmin, qmax, spec.dtype, explicit), spec.scheme is Scheme.SYM)
    return QuantType(spec.dtype, spec.scheme, spec.granularity, scale, zp.astype(np.int32), qmin, qmax, spec.observer)


def unify_ranges(ranges: Sequence[tuple[npt.ArrayLike, npt.ArrayLike]]) -> tuple[np.ndarray, np.ndarray]:
    """The union of ranges that must share one quantization type (Concat, NNCF's `_unify_statistics`).

    `compute_qparams` on the result gives the shared `QuantType`; every input and the output then use it.
    """
    if not ranges:
        raise PassError("unify_ranges needs at least one range")
    los = [np.asarray(lo, dtype=np.float32) for lo, _ in ranges]
    his = [np.asarray(hi, dtype=np.float32) for _, hi in ranges]
    if len({a.shape for a in los + his}) != 1:
        raise PassError(f"cannot unify ranges of different shapes: {sorted({str(a.shape) for a in los + his})}")
    return np.asarray(np.min(np.stack(los), axis=0)), np.asarray(np.max(np.stack(his), axis=0))


# ---- FP8 ----------------------------------------------------------------------------------------------------------

ScaleSet: TypeAlias = Literal["pow2", "arbitrary", "gaudi2", "gaudi3"]

_FP8_MAX: dict[DType, float] = {
    DType.F8E4M3FN: 448.0, DType.F8E4M3FNUZ: 240.0, DType.F8E5M2: 57344.0, DType.F8E5M2FNUZ: 57344.0,
}  # fmt: skip
# Hardware-aligned scales 2^e, e in [lo, hi] in steps of `step` (INC fp_utils EXP_BIAS_SETS): Gaudi2 E4M3 biases
# {3,7,11,15} give {16, 1, 1/16, 1/256}; Gaudi3 biases 0..62 give 2^7..2^-55 (E4M3) and 2^15..2^-47 (E5M2).
_HW_EXPONENTS: dict[tuple[str, DType], tuple[int, int, int]] = {
    ("gaudi2", DType.F8E4M3FN): (-8, 4, 4),
    ("gaudi2", DType.F8E5M2): (0, 0, 1),
    ("gaudi3", DType.F8E4M3FN): (-55, 7, 1),
    ("gaudi3", DType.F8E5M2): (-47, 15, 1),
}


def fp8_fullscale(dtype: DType, scale_set: ScaleSet = "arbitrary") -> float:
    """Largest magnitude the scaled tensor may reach: Gaudi2 E4M3 240 (the e4m3fnuz max), else the dtype max."""
    if dtype not in _FP8_MAX:
        raise PassError(f"{dtype} is not an FP8 type; expected one of {', '.join(d.value for d in _FP8_MAX)}")
    return 240.0 if (scale_set == "gaudi2" and dtype is DType.F8E4M3FN) else _FP8_MAX[dtype]


def _round_scale(raw: np.ndarray, dtype: DType, scale_set: ScaleSet) -> np.ndarray:
    if scale_set == "arbitrary":
        return np.where(raw > 0, raw, 1.0)
    with np.errstate(divide="ignore"):
        exp = np.ceil(np.log2(raw))  # POW2: 2^ceil(log2 s); 0 gives -inf
    if scale_set == "pow2":
        return np.where(raw > 0, np.exp2(exp), 1.0)
    if (scale_set, dtype) not in _HW_EXPONENTS:
        raise PassError(f"{scale_set} has no hardware-aligned scales for {dtype}")
    lo, hi, step = _HW_EXPONENTS[(scale_set, dtype)]
    return np.exp2(np.clip(np.ceil(exp / step) * step, lo, hi))  # HW_ALIGNED: exponent rounded up, then clamped


def compute_fp8_scale(
    amax: npt.ArrayLike,
    dtype: DType,
    *,
    fullscale: float | None = None,
    scale_set: ScaleSet = "pow2",
    backoff: float = 1.0,
    granularity: Granularity | None = None,
    observer: str = "minmax",
) -> QuantType:
    """INC/Gaudi FP8 scale: s = amax / (fullscale · backoff), rounded into `scale_set`; zero point 0.

    INC uses backoff 0.5 for weights and 0.25 for activations. A zero amax gives scale 1 ("pow2", "arbitrary") or
    the smallest hardware scale (Gaudi sets, as INC's clamp does). Consumers see cast_fp8(x / s) · s.
    """
    with np.errstate(over="ignore"):
        a = np.asarray(amax, dtype=np.float32)
    if not np.isfinite(a).all() or (a < 0).any():
        raise PassError(f"amax must be finite and >= 0; found {a.reshape(-1)[:3].tolist()}")
    g = granularity if granularity is not None else Granularity.per_tensor()
    if g.kind is GranularityKind.PER_TENSOR:
        if a.size != 1:
            raise PassError(f"per_tensor FP8 scale needs one amax, found shape {a.shape}; pass a granularity")
        a = a.reshape(())
    full = fp8_fullscale(dtype, scale_set) if fullscale is None else fullscale
    if not full > 0 or not backoff > 0:
        raise PassError(f"fullscale ({full}) and backoff ({backoff}) must be > 0")
    scale = _round_scale(a.astype(np.float64) / (full * backoff), dtype, scale_set).astype(np.float32)
    return QuantType(dtype, Scheme.SYM, g, scale, np.zeros(scale.shape), 0, 0, observer)


# ---- bias -----------------------------------------------------------------------------------------------------------

_INT32_QRANGE = float(np.iinfo(np.int32).max) - float(np.iinfo(np.int32).min + 1)  # 2^32 - 2, as ORT
_BIAS_EPSILON = 1.0001  # ORT's multiplicative_epsilon


def _per_tensor_scale(q: QuantType, what: str) -> np.ndarray:
    if q.scale.size != 1:
        raise PassError(f"{what} must be quantized per tensor, found {q.scale.size} scales")
    return q.scale.reshape(())


def bias_qparams(scale_x: QuantType, scale_w: QuantType) -> QuantType:
    """int32 bias type with scale s_x·s_w (per channel when the weight is, on the bias's axis 0) and zero point 0."""
    if not (scale_x.dtype.is_integer and scale_w.dtype.is_integer):
        raise PassError("an integer bias needs integer input and weight types; ORT keeps the FP8 bias in float")
    if scale_w.granularity.kind is GranularityKind.PER_GROUP:
        raise PassError("a per_group weight has no single bias scale per output channel; keep the bias in float")
    scale = _per_tensor_scale(scale_x, "the input of a biased op") * scale_w.scale
    per_channel = scale_w.granularity.kind is GranularityKind.PER_CHANNEL
    g = Granularity.per_channel(0) if per_channel else Granularity.per_tensor()
    lo, hi = DType.I32.int_range
    return QuantType(DType.I32, Scheme.SYM, g, scale, np.zeros(scale.shape), lo, hi, "none")


def adjust_weight_scale_for_bias(w_scale: QuantType, x_scale: QuantType, bias: npt.ArrayLike) -> QuantType:
    """ORT's int32 bias guard (qdq_quantizer._adjust_weight_scale_for_int32_bias).

    When s_x·s_w < 1.0001 · 2·|b| / (2^32 - 2), the weight scale is raised to exactly that bound, so the quantized
    bias fits int32. Per tensor |b| is the bias's absolute maximum; per channel each channel uses its own |b[c]|.
    Returns `w_scale` itself when nothing changes; the weight must then be requantized with the new scale.
    """
    b = np.abs(np.asarray(bias, dtype=np.float64))
    sx = float(_per_tensor_scale(x_scale, "the input of a biased op"))
    sw = w_scale.scale.astype(np.float64)
    if w_scale.granularity.kind is GranularityKind.PER_CHANNEL:
        if b.shape != sw.shape:
            raise PassError(f"bias shape {b.shape} does not match {sw.size} per-channel weight scales")
        bound = b
    else:
        bound = np.asarray(b.max(initial=0.0))
    smallest = _BIAS_EPSILON * 2.0 * bound / _INT32_QRANGE
    candidate = sx * sw
    raise_it = (candidate < smallest) & (candidate > 0)
    if not raise_it.any():
        return w_scale
    new = np.where(raise_it, sw * (smallest / np.where(raise_it, candidate, 1.0)), sw)
    return QuantType(w_scale.dtype, w_scale.scheme, w_scale.granularity, new, w_scale.zero_point,
                     w_scale.qmin, w_scale.qmax, w_scale.observer)  # fmt: skip


# ---- quantize / dequantize ------------------------------------------------------------------------------------------
# `quantize`, `dequantize` and `fake_quantize` live in quantir.ir.quant_math (backends need them and may not import
# the compiler); they are re-exported here next to the conventions that produce their QuantTypes.


def fake_quantize_bounds(qtype: QuantType) -> tuple[np.ndarray, np.ndarray, int]:
    """OpenVINO FakeQuantize (input_low, input_high, levels) equivalent to an integer `qtype`.

    input_low = (qmin - zp)·s, input_high = (qmax - zp)·s, levels = qmax - qmin + 1, so (ih - il)/(levels - 1) = s
    and the FQ grid is the QuantType's grid; output_low/high equal input_low/high (NNCF emits them so).
    """
    if not qtype.dtype.is_integer:
        raise PassError(f"{qtype.dtype} has no FakeQuantize; OpenVINO expresses FP8 as FakeConvert(scale=1/s)")
    s, zp = qtype.scale.astype(np.float64), qtype.zero_point.astype(np.float64)
    low, high = ((qtype.qmin - zp) * s).astype(np.float32), ((qtype.qmax - zp) * s).astype(np.float32)
    return low, high, qtype.qmax - qtype.qmin + 1
