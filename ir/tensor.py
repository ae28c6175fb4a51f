"""Constant payloads: an in-memory numpy array, or a lazy view of bytes in an external file.

External payloads are memory-mapped on `.numpy()` and streamed in chunks by `iter_bytes`, so that a
multi-gigabyte model is never held in memory at once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from quantir.ir.dtypes import DType
from quantir.ir.errors import SerializationError

__all__ = ["ExternalData", "Tensor", "pack_4bit", "unpack_4bit"]

_CHUNK = 16 << 20


@dataclass(frozen=True, slots=True)
class ExternalData:
    """`length` bytes at `offset` in `path`, little-endian, packed as ONNX raw data is."""

    path: str
    offset: int
    length: int


def unpack_4bit(raw: np.ndarray, dtype: DType, count: int) -> np.ndarray:
    """Unpack ONNX's two-per-byte 4-bit layout (low nibble first) into one element per byte."""
    b = np.asarray(raw, dtype=np.uint8).reshape(-1)
    out = np.empty(b.size * 2, dtype=np.uint8)
    out[0::2] = b & 0x0F
    out[1::2] = b >> 4
    out = out[:count]
    if dtype is DType.I4:
        return ((out.astype(np.int8) << 4) >> 4).astype(np.int8)
    return out


def pack_4bit(values: np.ndarray) -> np.ndarray:
    """The inverse of `unpack_4bit`."""
    v = np.asarray(values).reshape(-1).astype(np.uint8) & 0x0F
    if v.size % 2:
        v = np.concatenate([v, np.zeros(1, np.uint8)])
    return (v[0::2] | (v[1::2] << 4)).astype(np.uint8)


class Tensor:
    """A constant of IR type `dtype` and static `shape`.

    Exactly one of `array` (held in memory, storage dtype `dtype.storage`) or `external` is set.
    """

    __slots__ = ("_array", "dtype", "external", "shape")

    def __init__(
        self,
        dtype: DType,
        shape: tuple[int, ...],
        *,
        array: np.ndarray | None = None,
        external: ExternalData | None = None,
    ) -> None:
        if (array is None) == (external is None):
            raise ValueError("a Tensor needs exactly one of array= or external=")
        self.dtype = dtype
        self.shape = tuple(int(d) for d in shape)
        self.external = external
        if array is not None:
            array = np.asarray(array)
            if array.dtype != dtype.storage:
                raise ValueError(f"array of numpy dtype {array.dtype} cannot hold {dtype} (needs {dtype.storage})")
            if tuple(array.shape) != self.shape:
                raise ValueError(f"array shape {array.shape} differs from tensor shape {self.shape}")
        self._array = array

    @classmethod
    def from_numpy(cls, array: np.ndarray, dtype: DType | None = None) -> Tensor:
        """Wrap `array`; `dtype` is needed only where numpy has no matching type (bf16, fp8, int4)."""
        array = np.asarray(array)
        if dtype is None:
            dtype = _dtype_of(array.dtype)
        if array.dtype != dtype.storage:
            array = array.astype(dtype.storage)
        return cls(dtype, tuple(array.shape), array=array)

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        """Bytes of the payload as ONNX stores it (4-bit types packed)."""
        if self.dtype.bits == 4:
            return (self.size + 1) // 2
        if self.dtype is DType.STRING:
            return sum(len(s) for s in self.numpy().reshape(-1))
        return self.size * self.dtype.storage.itemsize

    @property
    def is_loaded(self) -> bool:
        return self._array is not None

    def numpy(self) -> np.ndarray:
        """The values; an external payload is memory-mapped read-only (4-bit ones are unpacked)."""
        if self._array is not None:
            return self._array
        ext = self.external
        assert ext is not None
        if self.dtype.bits == 4:
            raw = self._read_bytes()
            return unpack_4bit(np.frombuffer(raw, np.uint8), self.dtype, self.size).reshape(self.shape)
        if ext.length != self.nbytes:
            raise SerializationError(
                f"external data in {ext.path} at offset {ext.offset} has {ext.length} bytes; "
                f"a {self.dtype}{list(self.shape)} tensor needs {self.nbytes}"
            )
        if self.size == 0:
            return np.zeros(self.shape, self.dtype.storage)
        try:
            arr = np.memmap(ext.path, dtype=self.dtype.storage.newbyteorder("<"), mode="r",
                            offset=ext.offset, shape=self.shape)  # fmt: skip
        except (OSError, ValueError) as e:
            raise SerializationError(f"cannot map external data {ext.path} at offset {ext.offset}: {e}") from e
        return arr

    def iter_bytes(self, chunk: int = _CHUNK) -> Iterator[bytes]:
        """The payload in ONNX raw layout, in chunks, without mapping an external file."""
        if self._array is None:
            ext = self.external
            assert ext is not None
            try:
                with open(ext.path, "rb") as f:
                    f.seek(ext.offset)
                    left = ext.length
                    while left > 0:
                        data = f.read(min(chunk, left))
                        if not data:
                            raise SerializationError(f"{ext.path} ends before offset {ext.offset + ext.length}")
                        left -= len(data)
                        yield data
                        _drop_cache(f.fileno(), ext.offset, ext.length - left)
            except OSError as e:
                raise SerializationError(f"cannot read external data {ext.path}: {e}") from e
            return
        arr = self._array
        if self.dtype.bits == 4:
            yield pack_4bit(arr).tobytes()
            return
        if self.dtype is DType.STRING:
            raise SerializationError("string tensors have no raw byte layout")
        flat = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
        for start in range(0, flat.size, chunk):
            yield flat[start : start + chunk].tobytes()

    def _read_bytes(self) -> bytes:
        return b"".join(self.iter_bytes())

    def __repr__(self) -> str:
        where = "external" if self.external is not None else "inline"
        return f"Tensor({self.dtype}{list(self.shape)}, {where})"


def _drop_cache(fd: int, offset: int, length: int) -> None:
    # Tell the kernel the streamed pages are not needed again, so page cache does not balloon.
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


_NUMPY_TO_DTYPE = {
    np.dtype("float32"): DType.F32, np.dtype("float64"): DType.F64, np.dtype("float16"): DType.F16,
    np.dtype("int8"): DType.I8, np.dtype("uint8"): DType.U8, np.dtype("int16"): DType.I16,
    np.dtype("uint16"): DType.U16, np.dtype("int32"): DType.I32, np.dtype("uint32"): DType.U32,
    np.dtype("int64"): DType.I64, np.dtype("uint64"): DType.U64, np.dtype("bool"): DType.BOOL,
    np.dtype("complex64"): DType.C64, np.dtype("complex128"): DType.C128, np.dtype("object"): DType.STRING,
}  # fmt: skip


def _dtype_of(np_dtype: np.dtype) -> DType:
    try:
        return _NUMPY_TO_DTYPE[np.dtype(np_dtype)]
    except KeyError:
        raise ValueError(f"numpy dtype {np_dtype} has no IR dtype; pass dtype= explicitly") from None
