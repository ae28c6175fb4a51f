"""The meaning of a `QuantType` as array math: `quantize`, `dequantize`, `fake_quantize` (numpy only).

It lives in the IR layer so that the compiler (calibration, passes) and the backends (weight payloads) share the one
implementation; `quantir.compiler.qparams.scales` re-exports these functions next to the scale conventions.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from quantir.ir.dtypes import DType
from quantir.ir.errors import PassError
from quantir.ir.printer import MiniFloat, minifloat
from quantir.ir.types import Granularity, GranularityKind, QuantType

__all__ = ["dequantize", "fake_quantize", "from_float_storage", "quantize", "round_float", "to_float_storage"]


def _expand(param: np.ndarray, g: Granularity, shape: tuple[int, ...]) -> np.ndarray:
    """Broadcast a scale or zero point of granularity `g` against a tensor of `shape`."""
    if g.kind is GranularityKind.PER_TENSOR:
        if param.size != 1:
            raise PassError(f"per_tensor type has {param.size} scales")
        return param.reshape(())
    assert g.axis is not None
    if not -len(shape) <= g.axis < len(shape):
        raise PassError(f"axis {g.axis} is out of range for a tensor of shape {shape}")
    axis = g.axis % len(shape)
    if g.kind is GranularityKind.PER_CHANNEL:
        if param.shape != (shape[axis],):
            raise PassError(f"per_channel({g.axis}) needs {shape[axis]} scales, found shape {param.shape}")
        return param.reshape([-1 if i == axis else 1 for i in range(len(shape))])
    assert g.group_size is not None
    blocked = tuple(-(-d // g.group_size) if i == axis else d for i, d in enumerate(shape))
    if param.shape != blocked:
        raise PassError(f"per_group({g.axis}, {g.group_size}) needs scales of shape {blocked}, found {param.shape}")
    return np.repeat(param, g.group_size, axis=axis).take(range(shape[axis]), axis=axis)


def _codec(dtype: DType) -> MiniFloat:
    codec = minifloat(dtype)
    if codec is None:
        raise PassError(f"{dtype} is not a float storage type with integer codes")
    return codec


def _encode_minifloat(x: np.ndarray, dtype: DType) -> np.ndarray:
    """Saturating round-to-nearest-even cast of float32 `x` to the codes of a small float format.

    The positive codes of a sign-magnitude format are ordered by value, so rounding is a search in that grid; a tie
    goes to the even code, which is the even mantissa.
    """
    codec = _codec(dtype)
    half = 1 << (dtype.bits - 1)
    magnitudes = codec.values[:half].astype(np.float64)
    grid = magnitudes[: int(np.argmin(np.isfinite(magnitudes))) or half]  # finite codes are a prefix
    a = np.minimum(np.abs(x.astype(np.float64)), grid[-1])  # saturate to the largest finite value
    hi = np.clip(np.searchsorted(grid, a, side="left"), 0, grid.size - 1)
    lo = np.maximum(hi - 1, 0)
    d_lo, d_hi = a - grid[lo], grid[hi] - a
    code = np.where((d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0)), hi, lo)
    negative = np.signbit(x)
    if np.isnan(codec.values[half]):  # "fnuz" formats have no negative zero: code `half` is their NaN
        negative &= code != 0
    code = np.where(negative, code | half, code)
    if codec.nan_code is not None:
        code = np.where(np.isnan(x), codec.nan_code, code)
    return code.astype(dtype.storage)


def quantize(x: npt.ArrayLike, qtype: QuantType) -> np.ndarray:
    """round_half_even(x / s) + zp, clipped to [qmin, qmax], in the storage dtype (FP8: saturating cast, raw bits)."""
    xf = np.asarray(x, dtype=np.float32)
    scale = _expand(qtype.scale, qtype.granularity, xf.shape)
    if qtype.dtype.is_float:
        return _encode_minifloat(np.asarray(xf / scale, dtype=np.float32), qtype.dtype)
    zp = _expand(qtype.zero_point, qtype.granularity, xf.shape)
    wide = np.float64 if qtype.dtype.bits > 16 else np.float32  # int32 bias needs float64, as ORT does
    q = np.rint(xf.astype(wide) / scale.astype(wide)) + zp
    return np.clip(q, qtype.qmin, qtype.qmax).astype(qtype.dtype.storage)


def dequantize(q: npt.ArrayLike, qtype: QuantType) -> np.ndarray:
    """(q - zp) · s as float32; FP8 `q` holds the raw bits that `quantize` returned."""
    qa = np.asarray(q)
    scale = _expand(qtype.scale, qtype.granularity, qa.shape)
    if qtype.dtype.is_float:
        return (_codec(qtype.dtype).values[qa.astype(np.int64)] * scale).astype(np.float32)
    zp = _expand(qtype.zero_point, qtype.granularity, qa.shape)
    return ((qa.astype(np.float64) - zp) * scale).astype(np.float32)


def fake_quantize(x: npt.ArrayLike, qtype: QuantType) -> np.ndarray:
    """What consumers of a quantized value see: dequantize(quantize(x))."""
    return dequantize(quantize(x, qtype), qtype)


_HP_FLOATS = (DType.F32, DType.F16, DType.BF16)


def to_float_storage(x: npt.ArrayLike, dtype: DType) -> np.ndarray:
    """float32 `x` in the storage of the float type `dtype`, rounded to nearest even: float32 itself, float16, or
    bfloat16 as its uint16 bits (the upper half of the float32 bits; NaN stays a quiet NaN)."""
    f = np.array(x, dtype=np.float32, order="C")  # (ascontiguousarray makes a 0-d array 1-d)
    if dtype is DType.F32:
        return f.copy()
    if dtype is DType.F16:
        return f.astype(np.float16)
    if dtype is not DType.BF16:
        raise PassError(f"{dtype} is not a high-precision float type; expected one of {[d.value for d in _HP_FLOATS]}")
    u = f.view(np.uint32).astype(np.uint64)
    bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(f), np.uint16(0x7FC0), bits).astype(np.uint16)


def from_float_storage(bits: np.ndarray, dtype: DType) -> np.ndarray:
    """The float32 values of `to_float_storage`'s result."""
    if dtype is DType.BF16:
        return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.asarray(bits).astype(np.float32)


def round_float(x: npt.ArrayLike, dtype: DType) -> np.ndarray:
    """float32 `x` rounded to the nearest value of the float type `dtype` (as float32)."""
    return from_float_storage(to_float_storage(x, dtype), dtype)
