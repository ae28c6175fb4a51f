"""Decode ONNX TensorProtos into IR `Tensor`s in the storage layout `DType.storage` describes.

bf16 and fp8 become their raw bits (uint16/uint8), int4/uint4/fp4 are unpacked one element per byte,
strings become an object array of `str`. External payloads stay lazy (see `external_data`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from quantir.frontends.onnx.external_data import external_tensor
from quantir.ir import DType, FrontendError, Tensor, UnsupportedOpError
from quantir.ir.tensor import unpack_4bit

__all__ = ["decode_tensor", "dtype_of"]

_BITS_VIEW = {
    DType.BF16: np.uint16,
    DType.F8E4M3FN: np.uint8,
    DType.F8E4M3FNUZ: np.uint8,
    DType.F8E5M2: np.uint8,
    DType.F8E5M2FNUZ: np.uint8,
}
"""Types numpy lacks whose ml_dtypes arrays (from numpy_helper) are reinterpreted as raw bits."""


def dtype_of(code: int, *, what: str) -> DType:
    """The IR dtype of ONNX element type `code`; `what` names the tensor or value for the message."""
    try:
        return DType.from_onnx(code)
    except ValueError:
        name = onnx.TensorProto.DataType.Name(code) if code in onnx.TensorProto.DataType.values() else str(code)
        raise UnsupportedOpError(f"{what} has element type {name}, which quantir does not represent") from None


def decode_tensor(proto: onnx.TensorProto, base_dir: Path | None, *, what: str) -> Tensor:
    """The IR tensor of `proto`. `what` names it in errors (e.g. "initializer 'fc.weight'")."""
    dtype = dtype_of(proto.data_type, what=what)
    shape = tuple(int(d) for d in proto.dims)
    if any(d < 0 for d in shape):
        raise FrontendError(f"{what} has negative dimensions {list(shape)}")
    if proto.HasField("segment"):
        raise UnsupportedOpError(f"{what} is a segmented tensor, which is not supported")
    if proto.data_location == onnx.TensorProto.EXTERNAL:
        return external_tensor(proto, dtype, shape, base_dir, owner=what)
    try:
        array = _decode_raw(proto, dtype, shape) if proto.HasField("raw_data") else _decode_typed(proto, dtype)
        return Tensor(dtype, shape, array=array.reshape(shape))
    except (ValueError, TypeError) as e:
        raise FrontendError(f"{what}: cannot decode its {dtype}{list(shape)} data: {e}") from e


def _count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _decode_raw(proto: onnx.TensorProto, dtype: DType, shape: tuple[int, ...]) -> np.ndarray:
    if dtype is DType.STRING:
        raise ValueError("string tensors cannot use raw_data")
    raw = proto.raw_data
    count = _count(shape)
    if dtype.bits == 4:
        need = (count + 1) // 2
        if len(raw) != need:
            raise ValueError(f"raw_data has {len(raw)} bytes, expected {need}")
        return unpack_4bit(np.frombuffer(raw, np.uint8), dtype, count)
    little = dtype.storage.newbyteorder("<")
    if len(raw) != count * little.itemsize:
        raise ValueError(f"raw_data has {len(raw)} bytes, expected {count * little.itemsize}")
    array = np.frombuffer(raw, dtype=little)
    return array if little == dtype.storage else array.astype(dtype.storage)


def _as_bits(dtype: DType) -> Callable[[np.ndarray], np.ndarray]:
    return lambda a: a.view(_BITS_VIEW[dtype])


def _nibbles(a: np.ndarray) -> np.ndarray:
    # ml_dtypes float4 keeps its code in the low nibble of each byte.
    return (a.view(np.uint8) & 0x0F).astype(np.uint8)


_TO_STORAGE: dict[DType, Callable[[np.ndarray], np.ndarray]] = {
    **{dt: _as_bits(dt) for dt in _BITS_VIEW},
    DType.I4: lambda a: a.astype(np.int8),
    DType.U4: lambda a: a.astype(np.uint8),
    DType.F4E2M1: _nibbles,
    DType.STRING: lambda a: np.asarray(a, dtype=object),
}
"""Per-dtype conversion of a numpy_helper array into IR storage; other dtypes need only `astype`."""


def _decode_typed(proto: onnx.TensorProto, dtype: DType) -> np.ndarray:
    array = numpy_helper.to_array(proto)
    convert = _TO_STORAGE.get(dtype)
    if convert is not None:
        out = convert(array)
    else:
        out = array.astype(dtype.storage, copy=False)
    return np.ascontiguousarray(out).reshape(-1)
