"""Write a legalized quantized IR graph as an IPEX artifact: `model.pt`, the generated module traced with
`torch.jit.trace` and frozen (`torch.jit.freeze` folds each weight's `quantize_per_channel` into a QInt8 constant),
`qconf.json` (IPEX's qconf summary, keyed by the user's module paths: `ipex.prepare(model, ...)` then
`load_qconf_summary` applies quantir's decisions and scales to the user's own model), `qconf.quantir.json` (which
IR node each record is), the QDQ reference and the manifest, atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from quantir.backends.ipex.capabilities import TABLE
from quantir.backends.ipex.flavor import IpexFlavor
from quantir.backends.ipex.qconf_summary import build_qconf, qconf_sidecar
from quantir.backends.torch_codegen.artifact import emit_torch
from quantir.ir import Graph

__all__ = ["BACKEND", "MODEL_FILE", "QCONF_FILE", "conv_linear_nodes", "emit", "int8_patterns"]

BACKEND = "ipex"
MODEL_FILE = "model.pt"
QCONF_FILE = "qconf.json"
SIDECAR_FILE = "qconf.quantir.json"
IPEX_PINS = {"torch": "2.8.*", "intel-extension-for-pytorch": "2.8.0"}
"""The last IPEX CPU release and the torch it imports with (ipex-and-pt2e.md §3)."""

_CONV = ("aten::_convolution", "aten::conv1d", "aten::conv2d", "aten::conv3d")


def conv_linear_nodes(graph: Any) -> list[tuple[str, bool]]:
    """(kind "Conv"/"Gemm", whether it is in the int8 pattern) of every conv/linear of a TorchScript graph, in
    execution order. The pattern: activation and weight both come from `aten::dequantize`, which IPEX's JIT fuses
    into an int8 kernel. (A saved TorchScript module keeps no module scopes; the manifest's `quantized_nodes`
    and qconf.json's `fqn`s name the modules, in this order.)"""
    found = []
    for node in graph.nodes():
        kind = node.kind()
        if kind not in (*_CONV, "aten::linear"):
            continue
        producers = [i.node().kind() for i in list(node.inputs())[:2]]
        found.append(("Conv" if kind in _CONV else "Gemm", producers == ["aten::dequantize", "aten::dequantize"]))
    return found


def int8_patterns(graph: Any) -> list[tuple[str, str]]:
    """(kind, description) of each conv/linear in the int8 pattern (see `conv_linear_nodes`), in execution order."""
    names = {"Conv": "dequantize -> conv", "Gemm": "dequantize -> linear"}
    return [(kind, names[kind]) for kind, int8 in conv_linear_nodes(graph) if int8]


def _write(folder: Path, module: torch.nn.Module, examples: tuple[torch.Tensor, ...], shapes: tuple[Any, ...]) -> dict:
    traced = torch.jit.trace(module, examples, check_trace=False)
    frozen = torch.jit.freeze(traced.eval())
    torch.jit.save(frozen, os.fspath(folder / MODEL_FILE))
    kinds = [n.kind() for n in frozen.graph.nodes()]
    return {"torchscript": {"int8_patterns": len(int8_patterns(frozen.graph)),
                            "quantize_per_tensor": kinds.count("aten::quantize_per_tensor"),
                            "dequantize": kinds.count("aten::dequantize"),
                            "example_shapes": [list(x.shape) for x in examples]},
            "qconf": QCONF_FILE, "ipex_pins": IPEX_PINS}  # fmt: skip


def emit(graph: Graph, out_dir: str | os.PathLike[str], *, manifest: dict[str, Any]) -> Path:
    """`model.pt` + `qconf.json` + `qconf.quantir.json` + `model.qdq.onnx` + `quantir.json` into `out_dir`."""
    qconf, sidecar = build_qconf(graph), qconf_sidecar(graph)

    def write(
        folder: Path, module: torch.nn.Module, examples: tuple[torch.Tensor, ...], shapes: tuple[Any, ...]
    ) -> dict:
        facts = _write(folder, module, examples, shapes)
        (folder / QCONF_FILE).write_text(json.dumps(qconf, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        (folder / SIDECAR_FILE).write_text(json.dumps(sidecar, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        return facts

    return emit_torch(graph, out_dir, manifest=manifest, backend=BACKEND, model_file=MODEL_FILE, flavor=IpexFlavor(),
                      table=TABLE, write=write)  # fmt: skip
