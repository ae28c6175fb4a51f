"""Loading any supported model file into the IR, and writing IR back out.

The one place that maps file suffixes to frontends and text IO, so the CLI and API agree.
"""

from __future__ import annotations

import os
from pathlib import Path

from quantir.backends.onnx_proto import save_model
from quantir.frontends.onnx import import_onnx
from quantir.ir import Graph, QuantirError

__all__ = ["export_onnx", "load_graph"]

_SUFFIXES = (".onnx", ".qir")


def load_graph(path: str | os.PathLike[str]) -> Graph:
    """Read an ONNX model (float or quantized) or a `.qir` file into a verified IR graph."""
    p = Path(path)
    if not p.exists():
        raise QuantirError(f"{p}: no such file")
    if p.is_dir():
        raise QuantirError(f"{p} is a directory; expected a model file ({', '.join(_SUFFIXES)})")
    suffix = p.suffix.lower()
    if suffix == ".qir":
        from quantir.ir import textio  # the text reader (lark) loads only when a .qir file is read

        return textio.load(p)
    if suffix == ".onnx":
        return import_onnx(p)
    raise QuantirError(f"{p}: unknown model format {suffix or '(no suffix)'!r}; expected one of {', '.join(_SUFFIXES)}")


def export_onnx(graph: Graph, path: str | os.PathLike[str]) -> None:
    """Write `graph` as a float ONNX model (external data for large weights), atomically."""
    save_model(graph, path)
