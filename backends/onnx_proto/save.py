"""Write a float IR graph as an `.onnx` file, atomically, with weights optionally streamed to external data.

External weights go to `<model file name>.data` next to the model, each at a 4096-aligned offset, written by
streaming `Tensor.iter_bytes()` so no more than one chunk of weights is in memory. Both files are written to
temporary names in the target folder and renamed into place only once everything has been written.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import onnx

from quantir.backends.onnx_proto.emit import PROTO_LIMIT, build_model, inline_tensor
from quantir.ir import DType, Graph, SerializationError, Tensor

__all__ = ["ALIGNMENT", "save_model"]

ALIGNMENT = 4096
"""Offset alignment of each tensor in the external data file (a page, so runtimes can memory-map it)."""


class _ExternalWriter:
    """Places tensors of at least `threshold` bytes in an open external data file, inline otherwise."""

    def __init__(self, f: BinaryIO, location: str, threshold: int) -> None:
        self.f = f
        self.location = location
        self.threshold = threshold
        self.offset = 0

    def place(self, proto: onnx.TensorProto, name: str, tensor: Tensor) -> None:
        if tensor.dtype is DType.STRING or tensor.nbytes == 0 or tensor.nbytes < self.threshold:
            inline_tensor(proto, name, tensor)
            return
        pad = -self.offset % ALIGNMENT
        if pad:
            self.f.write(b"\0" * pad)
            self.offset += pad
        start = self.offset
        for chunk in tensor.iter_bytes():
            self.f.write(chunk)
            self.offset += len(chunk)
        if self.offset - start != tensor.nbytes:
            raise SerializationError(
                f"constant {name!r} streamed {self.offset - start} bytes; its "
                f"{tensor.dtype}{list(tensor.shape)} type needs {tensor.nbytes}"
            )
        proto.name = name
        proto.data_type = tensor.dtype.onnx_code
        proto.dims.extend(tensor.shape)
        proto.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", self.location), ("offset", start), ("length", tensor.nbytes)):
            proto.external_data.add(key=key, value=str(value))


@contextlib.contextmanager
def _temporary(final: Path) -> Iterator[tuple[BinaryIO, Path]]:
    """An open temporary file next to `final`; removed again if the block fails."""
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; the final file gets ordinary permissions
    try:
        with os.fdopen(fd, "wb") as f:
            yield f, path
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def save_model(
    graph: Graph,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
    size_threshold: int = 1024,
    producer: str = "quantir",
) -> None:
    """Write `graph` to `path` as an ONNX model, atomically.

    `external_data=None` chooses: weights go to `<name>.data` only when the constants exceed 2 GB, where external
    data is mandatory. `True` always writes tensors of at least `size_threshold` bytes externally; `False` refuses
    models that cannot be held inline.
    """
    final = Path(path)
    if not final.parent.is_dir():
        raise SerializationError(
            f"cannot write {os.fspath(final)!r}: folder {os.fspath(final.parent)!r} does not exist"
        )
    total = sum(v.const.nbytes for v in graph.constants.values() if v.const is not None)
    if external_data is None:
        external_data = total > PROTO_LIMIT
    elif not external_data and total > PROTO_LIMIT:
        raise SerializationError(
            f"graph {graph.name!r} has {total / 2**30:.2f} GiB of constants; above 2 GB ONNX needs external data "
            "(save_model(..., external_data=True))"
        )
    data_final = final.with_name(final.name + ".data")
    written: list[tuple[Path, Path]] = []
    try:
        with contextlib.ExitStack() as stack:
            if external_data:
                data_file, data_tmp = stack.enter_context(_temporary(data_final))
                written.append((data_tmp, data_final))
                writer = _ExternalWriter(data_file, data_final.name, size_threshold)
                model = build_model(graph, place=writer.place, producer=producer)
            else:
                model = build_model(graph, place=inline_tensor, producer=producer)
            payload = _serialize(model, final)
            model_file, model_tmp = stack.enter_context(_temporary(final))
            written.append((model_tmp, final))
            model_file.write(payload)
        for tmp, target in written:  # weights first: a model file never points at missing data
            os.replace(tmp, target)
    except OSError as e:
        raise SerializationError(f"cannot write ONNX model {os.fspath(final)!r}: {e}") from e
    finally:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)


def _serialize(model: onnx.ModelProto, final: Path) -> bytes:
    try:
        payload: bytes = model.SerializeToString()
    except Exception as e:  # protobuf refuses messages over 2 GB; the exception type differs between runtimes
        raise SerializationError(
            f"cannot serialize ONNX model {os.fspath(final)!r} ({type(e).__name__}: {e}); "
            "write large weights as external data (save_model(..., external_data=True))"
        ) from e
    return payload
