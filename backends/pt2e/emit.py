"""Write a legalized quantized IR graph as a PT2E artifact: `model.pt2`, a `torch.export`-saved program whose graph
carries `quantized_decomposed` Q/DQ at the IR's decisions (what `convert_pt2e` writes for X86InductorQuantizer),
with every symbolic IR dim exported dynamic (`Dim.AUTO`), plus the QDQ reference and the manifest."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from quantir.backends.pt2e.capabilities import TABLE
from quantir.backends.pt2e.flavor import Pt2eFlavor
from quantir.backends.torch_codegen.artifact import emit_torch
from quantir.ir import Graph

__all__ = ["BACKEND", "MODEL_FILE", "emit", "qdq_op_counts"]

BACKEND = "pt2e"
MODEL_FILE = "model.pt2"


def qdq_op_counts(program: Any) -> dict[str, int]:
    """`quantized_decomposed` ops of an exported program's graph, by name."""
    counts: Counter[str] = Counter()
    for n in program.graph.nodes:
        if n.op == "call_function" and "quantized_decomposed" in str(n.target):
            counts[str(n.target).split("quantized_decomposed.")[-1]] += 1
    return dict(counts)


def _write(folder: Path, module: torch.nn.Module, examples: tuple[torch.Tensor, ...], shapes: tuple[Any, ...]) -> dict:
    program = torch.export.export(module, examples, dynamic_shapes=shapes, strict=False)
    torch.export.save(program, os.fspath(folder / MODEL_FILE))
    return {"program": {"qdq_ops": qdq_op_counts(program),
                        "dynamic_dims": [sorted(s) if s else [] for s in shapes]}}  # fmt: skip


def emit(graph: Graph, out_dir: str | os.PathLike[str], *, manifest: dict[str, Any]) -> Path:
    """`model.pt2` + `model.qdq.onnx` + `quantir.json` into `out_dir`, atomically."""
    return emit_torch(graph, out_dir, manifest=manifest, backend=BACKEND, model_file=MODEL_FILE, flavor=Pt2eFlavor(),
                      table=TABLE, write=_write)  # fmt: skip
