"""Element types of the IR and how they are stored in numpy.

`ir/` imports only numpy, so types numpy lacks (bf16, fp8, int4) are stored as raw integers of the same
width (int4/uint4 unpacked, one element per byte); the `DType` says how to read them.
"""

from __future__ import annotations

import enum

import numpy as np

__all__ = ["DType"]


class DType(enum.Enum):
    """An IR element type. The value is the text-form name."""

    F32 = "f32"
    F64 = "f64"
    F16 = "f16"
    BF16 = "bf16"
    I8 = "i8"
    U8 = "u8"
    I16 = "i16"
    U16 = "u16"
    I32 = "i32"
    U32 = "u32"
    I64 = "i64"
    U64 = "u64"
    I4 = "i4"
    U4 = "u4"
    BOOL = "bool"
    STRING = "string"
    C64 = "c64"
    C128 = "c128"
    F8E4M3FN = "f8e4m3fn"
    F8E4M3FNUZ = "f8e4m3fnuz"
    F8E5M2 = "f8e5m2"
    F8E5M2FNUZ = "f8e5m2fnuz"
    F4E2M1 = "f4e2m1"

    @property
    def onnx_code(self) -> int:
        """The ONNX `TensorProto.DataType` number (kept here so `ir/` never imports onnx)."""
        return _ONNX_CODE[self]

    @classmethod
    def from_onnx(cls, code: int) -> DType:
        try:
            return _FROM_ONNX[code]
        except KeyError:
            raise ValueError(f"ONNX element type {code} has no quantir dtype") from None

    @classmethod
    def parse(cls, name: str) -> DType:
        try:
            return cls(name)
        except ValueError:
            allowed = ", ".join(d.value for d in cls)
            raise ValueError(f"unknown dtype {name!r}; expected one of {allowed}") from None

    @property
    def storage(self) -> np.dtype:
        """The numpy dtype constants of this type are held in."""
        return np.dtype(_STORAGE[self])

    @property
    def bits(self) -> int:
        return _BITS[self]

    @property
    def is_float(self) -> bool:
        return self in _FLOATS

    @property
    def is_integer(self) -> bool:
        return self in _INTS

    @property
    def int_range(self) -> tuple[int, int]:
        """Inclusive (min, max) of an integer type."""
        if self not in _INTS:
            raise ValueError(f"{self.value} is not an integer type")
        if self in (DType.I4, DType.U4):
            return (-8, 7) if self is DType.I4 else (0, 15)
        info = np.iinfo(self.storage)
        return int(info.min), int(info.max)

    def __str__(self) -> str:
        return self.value


_ONNX_CODE: dict[DType, int] = {
    DType.F32: 1, DType.U8: 2, DType.I8: 3, DType.U16: 4, DType.I16: 5, DType.I32: 6, DType.I64: 7,
    DType.STRING: 8, DType.BOOL: 9, DType.F16: 10, DType.F64: 11, DType.U32: 12, DType.U64: 13,
    DType.C64: 14, DType.C128: 15, DType.BF16: 16, DType.F8E4M3FN: 17, DType.F8E4M3FNUZ: 18,
    DType.F8E5M2: 19, DType.F8E5M2FNUZ: 20, DType.U4: 21, DType.I4: 22, DType.F4E2M1: 23,
}  # fmt: skip
_FROM_ONNX = {code: dt for dt, code in _ONNX_CODE.items()}

_STORAGE: dict[DType, str] = {
    DType.F32: "float32", DType.F64: "float64", DType.F16: "float16", DType.BF16: "uint16",
    DType.I8: "int8", DType.U8: "uint8", DType.I16: "int16", DType.U16: "uint16", DType.I32: "int32",
    DType.U32: "uint32", DType.I64: "int64", DType.U64: "uint64", DType.I4: "int8", DType.U4: "uint8",
    DType.BOOL: "bool", DType.STRING: "object", DType.C64: "complex64", DType.C128: "complex128",
    DType.F8E4M3FN: "uint8", DType.F8E4M3FNUZ: "uint8", DType.F8E5M2: "uint8", DType.F8E5M2FNUZ: "uint8",
    DType.F4E2M1: "uint8",
}  # fmt: skip

_BITS: dict[DType, int] = {
    DType.F32: 32, DType.F64: 64, DType.F16: 16, DType.BF16: 16, DType.I8: 8, DType.U8: 8, DType.I16: 16,
    DType.U16: 16, DType.I32: 32, DType.U32: 32, DType.I64: 64, DType.U64: 64, DType.I4: 4, DType.U4: 4,
    DType.BOOL: 8, DType.STRING: 0, DType.C64: 64, DType.C128: 128, DType.F8E4M3FN: 8, DType.F8E4M3FNUZ: 8,
    DType.F8E5M2: 8, DType.F8E5M2FNUZ: 8, DType.F4E2M1: 4,
}  # fmt: skip

_FLOATS = frozenset(
    {DType.F32, DType.F64, DType.F16, DType.BF16, DType.F8E4M3FN, DType.F8E4M3FNUZ, DType.F8E5M2,
     DType.F8E5M2FNUZ, DType.F4E2M1}
)  # fmt: skip
_INTS = frozenset(
    {DType.I8, DType.U8, DType.I16, DType.U16, DType.I32, DType.U32, DType.I64, DType.U64, DType.I4, DType.U4}
)
