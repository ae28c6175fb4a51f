"""Resolve ONNX external-data references into lazy `ExternalData` payloads, refusing unsafe locations.

Only file metadata is read here (`os.stat`); the bytes stay on disk until a pass asks for them.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

import onnx

from quantir.ir import DType, ExternalData, FrontendError, Tensor

__all__ = ["external_tensor", "resolve_location"]


def resolve_location(location: str, base_dir: Path, *, owner: str) -> Path:
    """The file `location` names, relative to `base_dir`; refused if it is absolute or escapes `base_dir`.

    `owner` names the initializer (or node attribute) for messages.
    """
    what = f"external data of {owner} (location {location!r})"
    if not location:
        raise FrontendError(f"{what}: the location is empty")
    if "\x00" in location:
        raise FrontendError(f"{what}: the location contains a NUL character")
    posix, windows = PurePosixPath(location), PureWindowsPath(location)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or location.startswith(("/", "\\")):
        raise FrontendError(
            f"{what} is refused: an absolute location could read any file on this machine; "
            "external data must be a path relative to the model's folder"
        )
    if ".." in posix.parts or ".." in windows.parts:
        raise FrontendError(
            f"{what} is refused: it escapes the model's folder with '..'; "
            "external data must stay inside the model's folder"
        )
    root = base_dir.resolve()
    target = (root / location).resolve()
    if target != root and root not in target.parents:
        raise FrontendError(
            f"{what} is refused: it resolves to {target}, outside the model's folder {root} (through a symlink)"
        )
    return target


def external_tensor(
    proto: onnx.TensorProto, dtype: DType, shape: tuple[int, ...], base_dir: Path | None, *, owner: str
) -> Tensor:
    """A lazy `Tensor` for a TensorProto whose data_location is EXTERNAL; `owner` names it in errors.

    Only `os.stat` is called. Without a `length` entry the payload is the tensor's size from `offset` on
    (ONNX's "to the end of the file", checked to be long enough).
    """
    entries = {e.key: e.value for e in proto.external_data}
    location = entries.get("location")
    if location is None:
        raise FrontendError(f"{owner} is stored externally but its external_data has no 'location' entry")
    if base_dir is None:
        raise FrontendError(
            f"{owner} keeps its data in {location!r}, but the model was given as a ModelProto without base_dir; "
            "pass import_onnx(model, base_dir=<folder of the .onnx file>)"
        )
    if dtype is DType.STRING:
        raise FrontendError(f"{owner}: string tensors cannot be stored as external data")
    path = resolve_location(location, base_dir, owner=owner)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise FrontendError(f"external data file {location!r} of {owner} not found (looked for {path})") from None
    except OSError as e:
        raise FrontendError(f"cannot stat external data file {location!r} of {owner}: {e}") from e
    if not path.is_file():
        raise FrontendError(f"external data location {location!r} of {owner} is not a regular file ({path})")
    offset = _int_entry(entries, "offset", 0, owner)
    if offset > size:
        raise FrontendError(
            f"{owner}: external data {location!r} offset {offset} is past the end of the file ({size} bytes)"
        )
    length = _int_entry(entries, "length", size - offset, owner)
    if offset + length > size:
        raise FrontendError(
            f"{owner}: external data {location!r} at offset {offset} with length {length} runs past the end of "
            f"the file ({size} bytes)"
        )
    need = Tensor(dtype, shape, external=ExternalData(os.fspath(path), offset, length)).nbytes
    if length != need and ("length" in entries or length < need):
        raise FrontendError(
            f"{owner}: external data {location!r} holds {length} bytes at offset {offset}; "
            f"a {dtype}{list(shape)} tensor needs {need}"
        )
    return Tensor(dtype, shape, external=ExternalData(os.fspath(path), offset, need))


def _int_entry(entries: dict[str, str], key: str, default: int, owner: str) -> int:
    raw = entries.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise FrontendError(f"{owner}: external_data {key} {raw!r} is not an integer") from None
    if value < 0:
        raise FrontendError(f"{owner}: external_data {key} {value} is negative")
    return value
