"""Write a legalized FP8 IR graph as the checkpoint INC's `load(..., format="huggingface")` reads on Gaudi
(neural-compressor-and-gaudi-fp8.md §3, "Save/load"):

- `model.safetensors`: per FP8 module `m` (its module path): `m.weight` in float8_e4m3fn / float8_e5m2 (a Linear's
  transposed to [in, out], as PatchedLinear stores `weight.t()`; a Conv2d's in its own [out, in, kh, kw] layout),
  `m.scale_input`, `m.scale_weight` (a scalar, or one per output channel) and `m.quant_input.scale_inv` in hp_dtype
  (and the same scales as `m.quant_input.scale` / `m.dequant_weights.scale`, the keys of INC's CPU QDQ modules);
  every other parameter of the model under its state-dict name, in hp_dtype (a Linear's weight in torch's
  [out, in]). The bytes are the IR's own codes (`quant_math.quantize`), never recomputed.
- `config.json` (`{"quantization_config": ...}`) and `quantization_config.json`: the FP8Config dict with
  `mode: "LOAD"` and `world_size`.
- INC's measurement files under `dump_stats_path` (inside the artifact): `<path>_hooks_maxabs.json` in the
  `Nodes`/`inputs`/`outputs`/`params` layout with INC's (1, 1) maxabs entries (`[[v]]`), and `<path>_hooks_maxabs
  _mod_list.json`. No `.npz`: INC's npz is one pickled dict (loading it needs `allow_pickle`); the JSON holds the
  same values, and a user who needs the npz writes it from the JSON with `numpy.savez`.
- `quantir_ir.qir` (+ `quantir_ir.tensors`, safetensors under another suffix: INC's `load` reads every
  `*.safetensors` file of the folder): the legalized IR, so `verify` and `load` rebuild the model around the checkpoint;
  `model.qdq.onnx`: the IR's fake-quant reference (ONNX Runtime runs float8 Q/DQ); `quantir.json`.

Everything is written into a temporary folder and renamed into place.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from quantir.backends.gaudi_fp8.legalize import fp8_units
from quantir.backends.legality import quant_type_of
from quantir.backends.onnx_proto import save_model
from quantir.backends.onnx_proto.artifact import SCHEMA, ir_sha256, manifest_text, output_quantization, write_artifact
from quantir.backends.onnx_proto.qdq import lower_to_qdq, node_names
from quantir.ir import DType, Graph, Node, QuantType, SerializationError, Tensor, Value, textio
from quantir.ir.quant_math import quantize, to_float_storage
from quantir.ir.sidecar import write_safetensors
from quantir.ir.traits import weight_inputs

__all__ = [
    "CHECKPOINT", "IR_FILE", "IR_TENSORS", "REFERENCE_FILE", "ModuleEntry", "emit", "hp_dtype_of", "measurement_paths",
    "module_entries",
]  # fmt: skip

BACKEND = "gaudi_fp8"
CHECKPOINT = "model.safetensors"
IR_FILE = "quantir_ir.qir"
IR_TENSORS = "quantir_ir.tensors"
"""The IR's large tensors (safetensors format): not `*.safetensors`, because INC's `load` reads every file of that
suffix in the folder into the model (seen with neural-compressor-pt 3.10: the IR's float fc1.weight clashed)."""
REFERENCE_FILE = "model.qdq.onnx"
_HP = {"bf16": DType.BF16, "fp16": DType.F16, "fp32": DType.F32}
_PARAM_NAME = re.compile(r"^[A-Za-z_][\w]*(\.[\w]+)+$")
"""State-dict keys: dotted identifiers (`encoder.layer.0.attention.self.query.weight`); exporter-made constants
(`val_16`) are not parameters."""


@dataclass(frozen=True, slots=True)
class ModuleEntry:
    """One FP8 module of the checkpoint and the IR values it comes from."""

    node: Node
    name: str
    """The IR node's emitted name."""
    module: str
    kind: str
    """"linear" or "conv2d"."""
    weight: Value
    transpose: bool
    """The IR weight is transposed to [in, out] for the checkpoint (a Gemm with transB=1)."""


def hp_dtype_of(config: dict[str, Any]) -> DType:
    name = config.get("hp_dtype", "bf16")
    if name not in _HP:
        raise SerializationError(f"hp_dtype {name!r} is not one of {', '.join(_HP)}")
    return _HP[name]


def module_entries(graph: Graph) -> list[ModuleEntry]:
    """The FP8 modules of a legalized graph, in graph order; two nodes of one module (a module called twice) are one
    entry, and two modules of one path that are not the same weight are an error."""
    names = dict(zip(graph.nodes, node_names(graph), strict=True))
    entries: dict[str, ModuleEntry] = {}
    for node in fp8_units(graph):
        w = node.inputs[1]
        assert w is not None
        module = node.source.module if node.source is not None and node.source.module else names[node]
        kind = "conv2d" if node.op_type == "Conv" else "linear"
        transpose = node.op_type == "Gemm" and bool(node.attr("transB", 0))
        entry = ModuleEntry(node, names[node], module, kind, w, transpose)
        if module in entries and entries[module].weight is not w:
            first = entries[module].name
            raise SerializationError(f"module path {module!r} names two FP8 layers with different weights "
                                     f"({first}, {names[node]}); the checkpoint keys would clash")  # fmt: skip
        entries.setdefault(module, entry)
    return list(entries.values())


def _hp_tensor(x: np.ndarray, hp: DType) -> Tensor:
    return Tensor.from_numpy(to_float_storage(x, hp), hp)


def _fp8_weight(entry: ModuleEntry) -> tuple[Tensor, QuantType]:
    w, q = entry.weight, quant_type_of(entry.weight)
    assert w.const is not None and q is not None
    codes = quantize(np.asarray(w.const.numpy(), dtype=np.float32), q)
    if entry.transpose:
        codes = codes.T
    return Tensor.from_numpy(np.ascontiguousarray(codes), q.dtype), q


def _linear_layouts(graph: Graph) -> dict[str, bool]:
    """Weight constant name -> whether the IR holds it as [in, out] (MatMul, Gemm transB=0): those are transposed
    back to torch's [out, in] when written as a float Linear weight."""
    out: dict[str, bool] = {}
    for node in graph.nodes:
        w = node.inputs[1] if node.op_type in ("MatMul", "Gemm") and len(node.inputs) > 1 else None
        if w is not None and w.const is not None and 1 in weight_inputs(node) and len(w.const.shape) == 2:
            out[w.name] = node.op_type == "MatMul" or not node.attr("transB", 0)
    return out


def checkpoint_tensors(graph: Graph, hp: DType) -> tuple[dict[str, Tensor], list[ModuleEntry]]:
    """Every tensor of the checkpoint, by key, and the FP8 module entries."""
    entries = module_entries(graph)
    tensors: dict[str, Tensor] = {}
    done: set[str] = set()
    for e in entries:
        weight, qw = _fp8_weight(e)
        qx = quant_type_of(e.node.inputs[0])
        assert qx is not None
        tensors[f"{e.module}.weight"] = weight
        tensors[f"{e.module}.scale_input"] = _hp_tensor(qx.scale.reshape(()), hp)
        tensors[f"{e.module}.scale_weight"] = _hp_tensor(qw.scale.reshape(qw.scale.shape), hp)
        tensors[f"{e.module}.quant_input.scale_inv"] = _hp_tensor(np.float32(1.0) / qx.scale.reshape(()), hp)
        # INC's CPU modules (use_qdq) read the same scales as their quantizers' own tensors
        tensors[f"{e.module}.quant_input.scale"] = _hp_tensor(qx.scale.reshape(()), hp)
        tensors[f"{e.module}.dequant_weights.scale"] = _hp_tensor(qw.scale.reshape(qw.scale.shape), hp)
        done.add(e.weight.name)
    layouts = _linear_layouts(graph)
    for v in graph.values():
        if v.const is None or v.name in done or not _PARAM_NAME.match(v.name) or v.name in tensors:
            continue
        if not v.const.dtype.is_float:
            continue
        data = np.asarray(v.const.numpy(), dtype=np.float32)
        if layouts.get(v.name, False):
            data = data.T
        tensors[v.name] = _hp_tensor(data, hp)
    return tensors, entries


def measurement_paths(dump_stats_path: str) -> tuple[str, str]:
    """The measurement JSON and mod-list paths, relative to the artifact folder (INC's names for observer maxabs,
    single card): a relative dump_stats_path is kept, an absolute one keeps its last folder and file name."""
    p = PurePosixPath(dump_stats_path.replace(os.sep, "/"))
    parts = [x for x in p.parts if x not in ("/", ".", "..")]
    base = "/".join(parts[-2:] if p.is_absolute() else parts) or "measure"
    return f"{base}_hooks_maxabs.json", f"{base}_hooks_maxabs_mod_list.json"


def _measurement_doc(measured: dict[str, Any], modules: list[str], samples: int) -> dict[str, Any]:
    nodes: dict[str, Any] = {}
    for m in modules:
        if m not in measured:
            raise SerializationError(f"module {m!r} has no measurement; convert with FP8Config (fp8-qparams records "
                                     "the maxabs of every FP8 module)")  # fmt: skip
        entry = measured[m]
        node: dict[str, Any] = {"inputs": [[[float(v)]] for v in entry["inputs"]]}
        if "outputs" in entry:
            node["outputs"] = [[[float(v)]] for v in entry["outputs"]]
        if "params" in entry:
            node["params"] = {k: [[float(v)]] for k, v in entry["params"].items()}
        nodes[m] = node
    return {"NumSamples": samples, "GlobalRank": None, "LocalRank": None, "Mode": "DynamicRange", "Nodes": nodes}


def inc_quantization_config(config: dict[str, Any]) -> dict[str, Any]:
    """The FP8Config dict as INC's `save` writes it into config.json: `mode: "LOAD"` and `world_size` 1."""
    if "fp8_config" not in config:
        raise SerializationError("the model was not converted with an FP8Config (its config has no 'fp8_config'); "
                                 "convert with FP8Config() to save it for gaudi_fp8")  # fmt: skip
    return {**config, "mode": "LOAD", "world_size": 1}


def emit(graph: Graph, out_dir: str | os.PathLike[str], *, manifest: dict[str, Any]) -> Path:
    """Write the checkpoint folder (module docstring) atomically into `out_dir`."""
    out = Path(out_dir).absolute()
    config = manifest.get("config", {})
    quant_config = inc_quantization_config(config)
    hp = hp_dtype_of(config)
    tensors, entries = checkpoint_tensors(graph, hp)
    if not entries:
        raise SerializationError("no module runs FP8: the IR has no Linear/Conv2d with FP8 input and weight "
                                 "types (convert with FP8Config; an int8 IR cannot become a Gaudi FP8 "
                                 "checkpoint)")  # fmt: skip
    measured = manifest.get("calibration", {}).get("fp8_measurements", {})
    samples = int(manifest.get("calibration", {}).get("samples", 0))
    stats_json, mod_list = measurement_paths(str(config.get("dump_stats_path", "./hqt_output/measure")))
    modules = [e.module for e in entries]
    lowered = lower_to_qdq(graph, guard_float_weights=False, dynamic=False)

    def write_all(tmp: Path) -> None:
        write_safetensors(tmp / CHECKPOINT, tensors, metadata={"format": "pt"})
        body = json.dumps({"quantization_config": quant_config}, indent=2) + "\n"
        (tmp / "config.json").write_text(body, encoding="utf-8")
        (tmp / "quantization_config.json").write_text(json.dumps(quant_config, indent=2) + "\n", encoding="utf-8")
        for rel, doc in ((stats_json, _measurement_doc(measured, modules, samples)), (mod_list, modules)):
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        textio.save(graph, tmp / IR_FILE)
        if textio.sidecar_path(tmp / IR_FILE).exists():
            os.replace(textio.sidecar_path(tmp / IR_FILE), tmp / IR_TENSORS)
        save_model(lowered, tmp / REFERENCE_FILE)

    def manifest_doc() -> str:
        doc: dict[str, Any] = {
            "schema": SCHEMA, "backend": BACKEND, "model": CHECKPOINT, "reference": REFERENCE_FILE, "ir": IR_FILE,
            "ir_sha256": ir_sha256(graph), "outputs": output_quantization(graph),
            "measurements": {"json": stats_json, "mod_list": mod_list},
            "quantized_nodes": [{"name": e.name, "op_type": e.node.op_type, "module": e.module, "kind": e.kind,
                                 "weight_layout": "[in, out]" if e.kind == "linear" else "[out, in, kh, kw]"}
                                for e in entries],
            "inputs": [v.name for v in graph.inputs], "output_names": [v.name for v in graph.outputs],
        }  # fmt: skip
        clash = sorted(k for k in manifest if k in doc)
        if clash:
            raise SerializationError(f"manifest keys {clash} are written by the {BACKEND} emitter; rename them")
        doc.update(manifest)
        return manifest_text(doc, out)

    return write_artifact(out, write_all, manifest_doc)
