"""An ONNX Runtime session of an IR graph: built from memory when its constants fit one protobuf, else from a
temporary file (deleted once ORT has loaded it)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from quantir.backends.onnx_proto.emit import PROTO_LIMIT, emit_model
from quantir.backends.onnx_proto.runtime import OptLevel, ort_session
from quantir.backends.onnx_proto.save import save_model
from quantir.ir import Graph

__all__ = ["graph_session"]


def graph_session(graph: Graph, *, level: OptLevel = "basic", prefix: str = "quantir-") -> Any:
    """A CPU ORT session running `graph` (quant types are ignored: emit what should run, e.g. a QDQ lowering)."""
    if sum(v.const.nbytes for v in graph.constants.values() if v.const is not None) < PROTO_LIMIT:
        return ort_session(emit_model(graph).SerializeToString(), level=level)
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        path = Path(tmp) / "model.onnx"
        save_model(graph, path)
        return ort_session(path, level=level)
