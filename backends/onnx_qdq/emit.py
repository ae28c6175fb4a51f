"""Write a legalized quantized IR graph as an ONNX QDQ artifact folder: `model.onnx` + `quantir.json`, atomically.

The folder is assembled under a temporary name next to its destination and renamed into place only after the
model passed `onnx.checker` (full check), so a reader never sees a half-written artifact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import onnx

from quantir.backends.onnx_proto import save_model
from quantir.backends.onnx_qdq.legalize import LegalizeReport, quantized_compute_units
from quantir.backends.onnx_qdq.lower import lower_to_qdq, node_names
from quantir.ir import Graph, QuantType, SerializationError
from quantir.ir.printer import print_graph_with_tensors

__all__ = ["BACKEND", "MANIFEST_FILE", "MODEL_FILE", "SCHEMA", "emit", "ir_sha256", "read_manifest"]

BACKEND = "onnx_qdq"
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "quantir.json"
SCHEMA = "quantir.artifact/1"
"""Marks a folder as a quantir artifact, which `emit` may replace."""
_RESERVED = ("schema", "backend", "model", "opset", "ir_sha256", "quantized_nodes", "outputs")


def ir_sha256(graph: Graph) -> str:
    """A stable hash of the IR: its canonical text plus the bytes of every tensor the text references by name."""
    text, tensors = print_graph_with_tensors(graph)
    h = hashlib.sha256(text.encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"\n@{name}:{t.dtype}{list(t.shape)}\n".encode())
        for chunk in t.iter_bytes():
            h.update(chunk)
    return h.hexdigest()


def _outputs(graph: Graph) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = {}
    for v in graph.outputs:
        q = v.quant
        if isinstance(q, QuantType):
            result[v.name] = {"quantized": True, "dtype": q.dtype.value, "scale": q.scale.reshape(-1).tolist(),
                              "zero_point": q.zero_point.reshape(-1).tolist()}  # fmt: skip
        else:
            result[v.name] = {"quantized": False}
    return result


def _manifest(graph: Graph, lowered: Graph, manifest: dict[str, Any]) -> dict[str, Any]:
    clash = sorted(k for k in manifest if k in _RESERVED)
    if clash:
        raise SerializationError(f"manifest keys {clash} are written by the onnx_qdq emitter; rename them")
    names = dict(zip(graph.nodes, node_names(graph)))
    units = [
        {"name": names[n], "op_type": n.op_type, "module": n.source.module if n.source else "", "kernel": kernel}
        for n, kernel in quantized_compute_units(graph)
    ]
    doc: dict[str, Any] = {
        "schema": SCHEMA, "backend": BACKEND, "model": MODEL_FILE, "opset": lowered.opset,
        "ir_sha256": ir_sha256(graph), "quantized_nodes": units, "outputs": _outputs(graph),
    }  # fmt: skip
    for key, value in manifest.items():
        doc[key] = value.to_json() if isinstance(value, LegalizeReport) else value
    return doc


def read_manifest(artifact_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of a quantir artifact folder, or None when the folder is not one."""
    path = Path(artifact_dir) / MANIFEST_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not str(doc.get("schema", "")).startswith("quantir.artifact/"):
        return None
    return doc


def _check_destination(out: Path) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise SerializationError(f"cannot write the artifact to {os.fspath(out)!r}: it exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and read_manifest(out) is None:
        raise SerializationError(
            f"refusing to replace {os.fspath(out)!r}: the folder is not empty and holds no quantir artifact "
            f"({MANIFEST_FILE} with schema {SCHEMA!r}); choose an empty or new folder"
        )


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; a previous artifact (or empty folder) there is moved aside first, then removed."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
    os.rename(out, old / "artifact")
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old / "artifact", out)  # put the previous artifact back
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def emit(
    graph: Graph, out_dir: str | os.PathLike[str], *, manifest: dict[str, Any], external_data: bool | None = None
) -> Path:
    """Lower `graph` (legalized by `legalize_for_onnx_qdq`) and write the artifact folder `out_dir`.

    `quantir.json` holds `manifest` (a `LegalizeReport` value is written as its JSON form) plus the schema, backend,
    model file, opset, IR hash, the quantized compute nodes with their expected ORT kernels, and the graph outputs'
    quantization. `external_data=None` moves weights to `model.onnx.data` only above 2 GB. An existing folder is
    replaced only when it is empty or a previous quantir artifact. Errors are `SerializationError`s.
    """
    out = Path(out_dir).absolute()
    _check_destination(out)
    lowered = lower_to_qdq(graph)
    doc = _manifest(graph, lowered, manifest)
    try:
        manifest_text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise SerializationError(f"the manifest for {os.fspath(out)!r} is not JSON-serializable: {e}") from e
    try:
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as e:
        raise SerializationError(f"cannot write the artifact {os.fspath(out)!r}: {e}") from e
    try:
        save_model(lowered, tmp / MODEL_FILE, external_data=external_data)
        try:
            onnx.checker.check_model(os.fspath(tmp / MODEL_FILE), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            raise SerializationError(f"the lowered QDQ model for {os.fspath(out)!r} fails onnx.checker: {e}") from e
        with open(tmp / MANIFEST_FILE, "w", encoding="utf-8") as f:
            f.write(manifest_text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o755)  # mkdtemp (and save_model's mkstemp) create private entries; an artifact is shared
        for entry in tmp.iterdir():
            os.chmod(entry, 0o644)
        _check_destination(out)
        _swap_into_place(tmp, out)
    except OSError as e:
        raise SerializationError(f"cannot write the artifact {os.fspath(out)!r}: {e}") from e
    finally:
        with contextlib.suppress(OSError):
            if tmp.exists():
                shutil.rmtree(tmp)
    return out
