"""The safetensors sidecar of a `.qir` file: large constants, written streaming and read lazily.

Format: 8-byte little-endian header length N, N bytes of JSON header (`{name: {dtype, shape, data_offsets}}`
plus `__metadata__`), then the byte buffer. The exact quantir dtype and shape of every tensor are kept in the
metadata (`quantir.tensors`), so types safetensors lacks still round-trip: 4-bit types are stored packed (two
per byte, the layout `ExternalData` promises) as U8 bytes, other unnamed types as raw U8 bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from quantir.ir.atomic import atomic_binary_file
from quantir.ir.dtypes import DType
from quantir.ir.errors import SerializationError
from quantir.ir.tensor import ExternalData, Tensor

__all__ = ["SAFETENSORS_DTYPES", "read_safetensors", "write_safetensors"]

SAFETENSORS_DTYPES: dict[DType, str] = {
    DType.F32: "F32", DType.F64: "F64", DType.F16: "F16", DType.BF16: "BF16", DType.I8: "I8", DType.U8: "U8",
    DType.I16: "I16", DType.U16: "U16", DType.I32: "I32", DType.U32: "U32", DType.I64: "I64", DType.U64: "U64",
    DType.BOOL: "BOOL", DType.C64: "C64", DType.F8E4M3FN: "F8_E4M3", DType.F8E5M2: "F8_E5M2",
    DType.F8E4M3FNUZ: "F8_E4M3FNUZ", DType.F8E5M2FNUZ: "F8_E5M2FNUZ",
}  # fmt: skip
"""Standard safetensors names; other dtypes (i4, u4, f4e2m1, c128) are stored as U8 bytes."""

_FROM_SAFETENSORS = {name: dt for dt, name in SAFETENSORS_DTYPES.items()}
_METADATA_KEY = "quantir.tensors"
_MAX_HEADER = 100 << 20  # the limit the safetensors library itself enforces


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    tensor: Tensor
    stored_dtype: str
    stored_shape: list[int]
    begin: int
    end: int


def _layout(name: str, t: Tensor) -> tuple[str, list[int]]:
    """The safetensors dtype and shape `t` is stored under."""
    if t.dtype is DType.STRING:
        raise SerializationError(
            f"tensor {name!r} holds strings, which safetensors cannot store; keep string constants inline"
        )
    if t.dtype in SAFETENSORS_DTYPES:
        return SAFETENSORS_DTYPES[t.dtype], list(t.shape)
    return "U8", [t.nbytes]


def _plan(tensors: Mapping[str, Tensor]) -> list[_Entry]:
    entries, offset = [], 0
    for name, t in tensors.items():
        dtype, shape = _layout(name, t)
        entries.append(_Entry(name, t, dtype, shape, offset, offset + t.nbytes))
        offset += t.nbytes
    return entries


def _header(entries: list[_Entry], metadata: Mapping[str, str]) -> bytes:
    quantir = {e.name: {"dtype": e.tensor.dtype.value, "shape": list(e.tensor.shape)} for e in entries}
    header: dict[str, object] = {"__metadata__": {**metadata, _METADATA_KEY: json.dumps(quantir)}}
    for e in entries:
        header[e.name] = {"dtype": e.stored_dtype, "shape": e.stored_shape, "data_offsets": [e.begin, e.end]}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return raw + b" " * (-len(raw) % 8)  # pad so the buffer starts 8-byte aligned


def write_safetensors(
    path: str | os.PathLike[str], tensors: Mapping[str, Tensor], *, metadata: Mapping[str, str] | None = None
) -> dict[str, ExternalData]:
    """Write `tensors` to `path` atomically, streaming each one with `Tensor.iter_bytes`.

    Returns where each tensor now lies in the file. Tensors may be lazily backed by the file being
    replaced: it is read until the new one is moved into place.
    """
    target = Path(path)
    entries = _plan(tensors)
    header = _header(entries, metadata or {})
    with atomic_binary_file(target) as f:
        f.write(len(header).to_bytes(8, "little"))
        f.write(header)
        for e in entries:
            _write_payload(f, e)
    start = 8 + len(header)
    where = os.path.abspath(target)
    return {e.name: ExternalData(where, start + e.begin, e.end - e.begin) for e in entries}


def _write_payload(f: BinaryIO, e: _Entry) -> None:
    written = 0
    for chunk in e.tensor.iter_bytes():
        f.write(chunk)
        written += len(chunk)
    if written != e.end - e.begin:
        raise SerializationError(f"tensor {e.name!r} produced {written} bytes; {e.end - e.begin} were expected")


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The tensors in the safetensors file `path`, each backed lazily by `ExternalData` (nothing is mapped)."""
    where = os.path.abspath(path)
    try:
        size = os.path.getsize(where)
        with open(where, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise SerializationError(f"{where} is not a safetensors file: it has only {size} bytes")
            n = int.from_bytes(head, "little")
            if n > min(_MAX_HEADER, size - 8):
                raise SerializationError(f"{where} is not a safetensors file: header length {n} is impossible")
            raw = f.read(n)
    except OSError as e:
        raise SerializationError(f"cannot read {where}: {e}") from e
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as e:
        raise SerializationError(f"{where} is not a safetensors file: {e}") from e
    metadata = header.pop("__metadata__", None) or {}
    exact = _exact_types(where, metadata)
    buffer_start, buffer_size = 8 + n, size - 8 - n
    return {
        name: _lazy_tensor(where, name, entry, exact.get(name), buffer_start, buffer_size)
        for name, entry in header.items()
    }


def _exact_types(where: str, metadata: object) -> dict[str, tuple[DType, tuple[int, ...]]]:
    if not isinstance(metadata, dict) or _METADATA_KEY not in metadata:
        return {}
    try:
        table = json.loads(metadata[_METADATA_KEY])
        return {name: (DType.parse(e["dtype"]), tuple(int(d) for d in e["shape"])) for name, e in table.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise SerializationError(f"{where}: bad {_METADATA_KEY} metadata: {e}") from e


def _lazy_tensor(
    where: str, name: str, entry: object, exact: tuple[DType, tuple[int, ...]] | None, start: int, size: int
) -> Tensor:
    try:
        assert isinstance(entry, dict)
        begin, end = (int(x) for x in entry["data_offsets"])
        stored = str(entry["dtype"])
        shape = tuple(int(d) for d in entry["shape"])
    except (AssertionError, KeyError, TypeError, ValueError) as e:
        raise SerializationError(f"{where}: entry {name!r} is malformed: {entry!r}") from e
    if exact is not None:
        dtype, shape = exact
    elif stored in _FROM_SAFETENSORS:
        dtype = _FROM_SAFETENSORS[stored]
    else:
        raise SerializationError(f"{where}: tensor {name!r} has dtype {stored}, which quantir does not read")
    if not 0 <= begin <= end <= size:
        raise SerializationError(f"{where}: tensor {name!r} lies at [{begin}, {end}), outside the {size}-byte buffer")
    t = Tensor(dtype, shape, external=ExternalData(where, start + begin, end - begin))
    if dtype is DType.STRING or t.nbytes != end - begin:
        raise SerializationError(f"{where}: tensor {name!r} is {dtype}{list(shape)} but has {end - begin} bytes")
    return t
