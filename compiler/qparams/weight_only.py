"""Weight-only quantization parameters: INC's round-to-nearest math (neural-compressor-and-gaudi-fp8.md §4) per group
of `group_size` weights along the reduction (input-channel) axis, as a `QuantType` the backends emit unchanged.

- asymmetric: the group's range is widened to include 0; s = (max - min) / (2^b - 1), zp = round(-min / s), codes
  in [0, 2^b - 1] (unsigned storage);
- symmetric: s = max|w| / (2^(b-1) - 1), zp = 0, codes in [-2^(b-1), 2^(b-1) - 1] (signed storage);
- symmetric full range (`use_full_range`): s = max|w| / 2^(b-1), so the extreme weight lands on the extra code
  -2^(b-1). INC flips the sign of s where the extreme is positive (its code flips when |max| > |min|; its docstring
  says the opposite, the code is what runs). A negative scale is the same grid as unsigned storage with zero point
  2^(b-1) - 1 instead of 2^(b-1), which is how it is stored here (scales stay positive, as ONNX and OpenVINO want).

A group of all zeros gets s = 1 (INC sets max|w| to 1 there). Rounding is half to even (torch.round, numpy.rint).
"""

from __future__ import annotations

import numpy as np

from quantir.ir import DType, Granularity, QuantType, Scheme

__all__ = ["WEIGHT_ONLY_DTYPES", "group_view", "rtn_qtype"]

WEIGHT_ONLY_DTYPES: dict[tuple[int, bool], DType] = {
    (4, True): DType.I4, (4, False): DType.U4, (8, True): DType.I8, (8, False): DType.U8,
}  # fmt: skip
"""(bits, signed storage) -> the IR storage type; other widths have no storage type in ONNX or OpenVINO."""


def group_view(w: np.ndarray, axis: int, group_size: int) -> np.ndarray:
    """`w` (2-D) as [groups, group_size, other] along `axis`, zero-padded to whole groups (padding never widens a
    range that already includes 0, and every range here does)."""
    moved = np.moveaxis(np.asarray(w, dtype=np.float32), axis, 0)
    k = moved.shape[0]
    groups = -(-k // group_size)
    padded = np.zeros((groups * group_size, *moved.shape[1:]), dtype=np.float32)
    padded[:k] = moved
    return padded.reshape(groups, group_size, -1)


def _blocked(params: np.ndarray, w: np.ndarray, axis: int) -> np.ndarray:
    """[groups, other] back to the IR's blocked scale shape: `w`'s shape with `axis` counted in groups."""
    shape = list(np.moveaxis(w, axis, 0).shape)
    shape[0] = params.shape[0]
    return np.moveaxis(params.reshape(shape), 0, axis)


def rtn_qtype(
    w: np.ndarray, *, axis: int, group_size: int, bits: int, sym: bool, full_range: bool = False
) -> QuantType:
    """The weight-only `QuantType` of constant `w` (2-D), groups of `group_size` along `axis` (a group size of at
    least the axis length is one group per output channel: INC's group_size=-1)."""
    if (bits, True) not in WEIGHT_ONLY_DTYPES:
        raise ValueError(f"{bits}-bit weights have no storage type; weight-only quantization takes 4 or 8 bits")
    size = min(group_size, w.shape[axis]) if group_size > 0 else w.shape[axis]
    g = group_view(w, axis, size)
    lo, hi = np.minimum(g.min(axis=1), 0.0), np.maximum(g.max(axis=1), 0.0)
    granularity = Granularity.per_group(axis, size)
    if not sym:
        levels = 2**bits - 1
        scale = (hi - lo) / np.float32(levels)
        scale = np.where(scale == 0, np.float32(1.0), scale).astype(np.float32)
        zp = np.clip(np.rint(-lo / scale), 0, levels)
        dtype, qmin, qmax = WEIGHT_ONLY_DTYPES[(bits, False)], 0, levels
        scheme = Scheme.ASYM
    else:
        half = 2 ** (bits - 1)
        amax = np.maximum(-lo, hi)
        amax = np.where(amax == 0, np.float32(1.0), amax).astype(np.float32)
        if full_range:
            scale = (amax / np.float32(half)).astype(np.float32)
            zp = np.where(hi > -lo, half - 1, half)  # extreme positive: codes -(2^(b-1)-1)..2^(b-1) around zp
            dtype, qmin, qmax = WEIGHT_ONLY_DTYPES[(bits, False)], 0, 2 * half - 1
        else:
            scale = (amax / np.float32(half - 1)).astype(np.float32)
            zp = np.zeros_like(scale)
            dtype, qmin, qmax = WEIGHT_ONLY_DTYPES[(bits, True)], -half, half - 1
        scheme = Scheme.SYM
    return QuantType(dtype, scheme, granularity, _blocked(scale, w, axis), _blocked(zp, w, axis).astype(np.int32),
                     qmin, qmax, "rtn")  # fmt: skip
