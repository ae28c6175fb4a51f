"""Value types: tensor types with symbolic dims, sequence/optional wrappers, and quantization types.

Quantization is a type on a value (ARCHITECTURE.md §3): a `QuantSpec` says what and how before calibration,
a `QuantType` carries the resulting scale and zero point. Its meaning is fake quantization.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

import numpy as np

from quantir.ir.dtypes import DType

__all__ = [
    "DYNAMIC_OBSERVER",
    "Dim",
    "Granularity",
    "GranularityKind",
    "OptionalType",
    "QuantSpec",
    "QuantType",
    "Scheme",
    "SequenceType",
    "TensorType",
    "ValueType",
]

Dim: TypeAlias = int | str | None
"""A dimension: a known size, a symbolic name, or None for unknown."""


@dataclass(frozen=True, slots=True)
class TensorType:
    """A tensor of `dtype` with `shape`; `shape=None` means the rank is unknown."""

    dtype: DType
    shape: tuple[Dim, ...] | None = None

    def __post_init__(self) -> None:
        if self.shape is not None:
            for d in self.shape:
                if isinstance(d, bool) or not (d is None or isinstance(d, (int, str))):
                    raise TypeError(f"dimension {d!r} must be an int, a symbol name or None")
                if isinstance(d, int) and d < 0:
                    raise ValueError(f"dimension {d} is negative in shape {self.shape}")

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)


@dataclass(frozen=True, slots=True)
class SequenceType:
    """An ONNX sequence of `elem` values."""

    elem: ValueType


@dataclass(frozen=True, slots=True)
class OptionalType:
    """An ONNX optional holding `elem` or nothing."""

    elem: ValueType


ValueType: TypeAlias = TensorType | SequenceType | OptionalType


class Scheme(enum.Enum):
    SYM = "sym"
    ASYM = "asym"


class GranularityKind(enum.Enum):
    PER_TENSOR = "per_tensor"
    PER_CHANNEL = "per_channel"
    PER_GROUP = "per_group"


@dataclass(frozen=True, slots=True)
class Granularity:
    """How many scales a quantized value has: one, one per channel of `axis`, or one per `group_size` block."""

    kind: GranularityKind = GranularityKind.PER_TENSOR
    axis: int | None = None
    group_size: int | None = None

    def __post_init__(self) -> None:
        k = self.kind
        if k is GranularityKind.PER_TENSOR and (self.axis is not None or self.group_size is not None):
            raise ValueError("per_tensor granularity takes no axis or group size")
        if k is GranularityKind.PER_CHANNEL and (self.axis is None or self.group_size is not None):
            raise ValueError("per_channel granularity needs an axis and no group size")
        if k is GranularityKind.PER_GROUP and (self.axis is None or not self.group_size or self.group_size < 1):
            raise ValueError("per_group granularity needs an axis and a positive group size")

    @classmethod
    def per_tensor(cls) -> Granularity:
        return cls()

    @classmethod
    def per_channel(cls, axis: int) -> Granularity:
        return cls(GranularityKind.PER_CHANNEL, axis)

    @classmethod
    def per_group(cls, axis: int, group_size: int) -> Granularity:
        return cls(GranularityKind.PER_GROUP, axis, group_size)


ObserverName: TypeAlias = Literal["minmax", "kl", "percentile", "mse", "none"]


def _default_range(dtype: DType) -> tuple[int, int]:
    if dtype.is_integer:
        return dtype.int_range
    return (0, 0)  # float storage (fp8): qmin/qmax are unused


DYNAMIC_OBSERVER = "dynamic"
"""The observer of an activation quantized at run time from each batch (ONNX DynamicQuantizeLinear): its
`QuantSpec` is never calibrated into a `QuantType`, and only the kernels that quantize their own input (MatMul/Gemm
data inputs) see it quantized; any other reader reads the float value."""


@dataclass(frozen=True, slots=True)
class QuantSpec:
    """What to quantize a value to and how, before calibration has produced a scale (or, with the observer
    `DYNAMIC_OBSERVER`, what the runtime computes per batch)."""

    dtype: DType
    scheme: Scheme = Scheme.SYM
    granularity: Granularity = field(default_factory=Granularity)
    observer: str = "minmax"
    qmin: int | None = None
    qmax: int | None = None

    def __post_init__(self) -> None:
        if not (self.dtype.is_integer or self.dtype.is_float):
            raise ValueError(f"{self.dtype} cannot be a quantized storage type")
        lo, hi = _default_range(self.dtype)
        if self.dtype.is_integer:
            qmin = lo if self.qmin is None else self.qmin
            qmax = hi if self.qmax is None else self.qmax
            if not lo <= qmin < qmax <= hi:
                raise ValueError(f"range [{qmin}, {qmax}] does not fit {self.dtype} ([{lo}, {hi}])")
            object.__setattr__(self, "qmin", qmin)
            object.__setattr__(self, "qmax", qmax)

    @property
    def dynamic(self) -> bool:
        """Quantized at run time from each batch's range (never calibrated)."""
        return self.observer == DYNAMIC_OBSERVER


@dataclass(frozen=True, slots=True, eq=False)
class QuantType:
    """A calibrated quantization type: consumers see `dequantize(quantize(v))`.

    `scale` (float32) and `zero_point` (int32, or float32 for float storage) are arrays: shape () per
    tensor, (C,) per channel, and the blocked shape per group.
    """

    dtype: DType
    scheme: Scheme
    granularity: Granularity
    scale: np.ndarray
    zero_point: np.ndarray
    qmin: int
    qmax: int
    observer: str = "minmax"

    def __post_init__(self) -> None:
        scale = np.asarray(self.scale, dtype=np.float32)
        zp_dtype = np.float32 if self.dtype.is_float else np.int32
        zp = np.asarray(self.zero_point, dtype=zp_dtype)
        if zp.shape != scale.shape:
            zp = np.broadcast_to(zp, scale.shape).copy()
        scale.setflags(write=False)
        zp.setflags(write=False)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "zero_point", zp)

    @property
    def spec(self) -> QuantSpec:
        return QuantSpec(self.dtype, self.scheme, self.granularity, self.observer,
                         self.qmin if self.dtype.is_integer else None,
                         self.qmax if self.dtype.is_integer else None)  # fmt: skip

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantType):
            return NotImplemented
        return (
            self.dtype == other.dtype
            and self.scheme == other.scheme
            and self.granularity == other.granularity
            and self.qmin == other.qmin
            and self.qmax == other.qmax
            and self.observer == other.observer
            and self.scale.shape == other.scale.shape
            and bool(np.array_equal(self.scale, other.scale, equal_nan=True))
            and bool(np.array_equal(self.zero_point, other.zero_point, equal_nan=True))
        )

    def __hash__(self) -> int:
        return hash((self.dtype, self.scheme, self.granularity, self.qmin, self.qmax, self.scale.tobytes()))
