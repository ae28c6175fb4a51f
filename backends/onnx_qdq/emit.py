"""Write a legalized quantized IR graph as an ONNX QDQ artifact folder: `model.onnx` + `quantir.json`, atomically.

The folder is assembled under a temporary name next to its destination and renamed into place only when complete,
so a reader never sees a half-written artifact. `onnx.checker` runs in `verify_onnx_qdq`, not here: its first call
in a process initializes ONNX's schema registry (~15 ms, as long as the whole conversion of a small CNN), and the
lowering is checked against it by the test suite (every quantized test model, the ONNX zoo).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from quantir.backends.onnx_proto import save_model
from quantir.backends.onnx_proto.artifact import (
    MANIFEST_FILE,
    SCHEMA,
    check_destination,
    ir_sha256,
    manifest_text,
    output_quantization,
    read_manifest,
    write_artifact,
)
from quantir.backends.onnx_proto.qdq import lower_to_qdq, node_names
from quantir.backends.onnx_qdq.capabilities import FP8_SESSION_CONFIG
from quantir.backends.onnx_qdq.dynamic_matmul import to_dynamic_matmul
from quantir.backends.onnx_qdq.legalize import emulated_units, quantized_compute_units
from quantir.backends.onnx_qdq.matmul_nbits import to_matmul_nbits
from quantir.ir import Graph, SerializationError
from quantir.ir.clone import clone_graph

__all__ = ["BACKEND", "MANIFEST_FILE", "MODEL_FILE", "REFERENCE_FILE", "SCHEMA", "emit", "ir_sha256", "read_manifest"]

BACKEND = "onnx_qdq"
MODEL_FILE = "model.onnx"
REFERENCE_FILE = "model.qdq.onnx"
"""Written beside a model whose weight-only or dynamic MatMuls became MatMulNBits / DynamicQuantizeMatMul: the same
graph in standard Q/DQ ops, the IR's fake-quant semantics that `verify_onnx_qdq` compares the runtime with."""
_RESERVED = ("schema", "backend", "model", "reference", "dynamic", "opset", "ir_sha256", "quantized_nodes", "outputs",
             "session_config")  # fmt: skip


def _manifest(graph: Graph, lowered: Graph, manifest: dict[str, Any], reference: bool) -> dict[str, Any]:
    clash = sorted(k for k in manifest if k in _RESERVED)
    if clash:
        raise SerializationError(f"manifest keys {clash} are written by the onnx_qdq emitter; rename them")
    names = dict(zip(graph.nodes, node_names(graph)))
    emulated = emulated_units(graph)
    units = [
        {"name": names[n], "op_type": n.op_type, "module": n.source.module if n.source else "", "kernel": kernel,
         **({"emulated": True} if n in emulated else {})}
        for n, kernel in quantized_compute_units(graph)
    ]  # fmt: skip
    doc: dict[str, Any] = {
        "schema": SCHEMA, "backend": BACKEND, "model": MODEL_FILE, "opset": lowered.opset,
        "ir_sha256": ir_sha256(graph), "quantized_nodes": units, "outputs": output_quantization(graph),
        "reference": REFERENCE_FILE if reference else MODEL_FILE,
        "dynamic": any(op == "DynamicQuantizeMatMul" for op in (n.op_type for n in lowered.nodes)),
    }  # fmt: skip
    if emulated:  # FP8: ORT's QDQ transformers assume integer storage (FP8_SESSION_CONFIG)
        doc["session_config"] = dict(FP8_SESSION_CONFIG)
    doc.update(manifest)
    return doc


def emit(
    graph: Graph, out_dir: str | os.PathLike[str], *, manifest: dict[str, Any], external_data: bool | None = None
) -> Path:
    """Lower `graph` (legalized by `legalize_for_onnx_qdq`) and write the artifact folder `out_dir`.

    `quantir.json` holds `manifest` (a `LegalizeReport` value is written as its JSON form) plus the schema, backend,
    model file, opset, IR hash, the quantized compute nodes with their expected ORT kernels, and the graph outputs'
    quantization, and for FP8 models the ORT session config they must be loaded with (`session_config`).
    `external_data=None` moves weights to `model.onnx.data` only above 2 GB. An existing folder is
    replaced only when it is empty or a previous quantir artifact. Errors are `SerializationError`s.
    """
    out = Path(out_dir).absolute()
    check_destination(out)
    reference = lower_to_qdq(graph)
    lowered = clone_graph(reference)[0]
    rewritten = to_dynamic_matmul(lowered) + to_matmul_nbits(lowered) > 0  # dynamic first: both read blocked DQ
    text = manifest_text(_manifest(graph, lowered, manifest, rewritten), out)

    def write(tmp: Path) -> None:
        save_model(lowered, tmp / MODEL_FILE, external_data=external_data)
        if rewritten:
            save_model(reference, tmp / REFERENCE_FILE, external_data=external_data)

    return write_artifact(out, write, text)
