"""Check an OpenVINO artifact on the CPU plugin: which quantized Conv/MatMul/Gemm really run an int8 kernel
(`runtimePrecision` u8/i8 and a `primitiveType` ending in `_I8` in the compiled model's runtime graph), and whether
OpenVINO computes what the IR's fake-quant semantics compute (the QDQ reference run in ORT with ORT_DISABLE_ALL).

Runtime nodes are mapped back to IR nodes through `originalLayersNames`: the frontend names the parts of an IR node
`<node>` or `<node>/WithoutBiases/...`, and the plugin lists every op it fused into a runtime node there.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from quantir.backends.contract import DYNAMIC_MAX_REL, KernelRow, VerifyReport, check_outputs
from quantir.backends.onnx_proto import ort_session, run_all
from quantir.backends.onnx_proto.artifact import read_manifest
from quantir.backends.onnx_proto.emulation import EmulatedVerifyReport
from quantir.backends.openvino.capabilities import COVERAGE_LAYERS, RUNTIME, is_int8_primitive, is_weight_only_kernel
from quantir.backends.openvino.emit import BACKEND, MODEL_FILE, REFERENCE_FILE
from quantir.ir import SerializationError

__all__ = ["CPU_CONFIG", "OvRunner", "VerifyReport", "compile_cpu", "load", "runtime_nodes", "verify_openvino"]


FP8_MAX_REL = 0.1
"""Output tolerance (of the largest magnitude) of an FP8 artifact against its fake-quant reference on the CPU plugin.
OpenVINO 2026.4.1's CPU FakeConvert rounds f32 -> f16 -> f8 (double rounding; its codes are exactly quant_math's of
the f16-rounded x·(1/s)): measured on 200k normal values, 0.39% of e4m3 codes (0.21% of e5m2) are one step off
round-to-nearest-even, and 8.3% of the digits input (pixels k/16: one tie flips every equal pixel); through the digits
CNN that reaches the logits as 0.06 relative (top-1 accuracy within 0.5 pt of FP32)."""
FP8_NOTE = (
    "OpenVINO's CPU plugin has no FP8 kernels: each FakeConvert({types}) runs as an f32 Eltwise, the f8 weights are "
    "converted to f32, and the Convolution/FullyConnected run f32 (emulation). Its FakeConvert rounds through f16 "
    "(double rounding), so a few codes differ by one step from round-to-nearest-even: outputs are compared within "
    "{tol:g} of their magnitude"
)

FUSED_SUBGRAPH = "Subgraph"
"""The CPU plugin's snippets kernel: it may fuse a MatMul with its neighbours (seen on avx512/AMX Xeons: two
FullyConnected and a Softmax in one u8 `jit_avx512_I8` Subgraph); it runs the IR node when it lists it."""

_NOT_KERNELS = frozenset({"Const", "Input", "Output"})
"""Runtime nodes that hold or pass data, not kernels."""


class OvRunner:
    """An OpenVINO model compiled for the CPU plugin, as the contract's `Runner`."""

    def __init__(self, compiled: ov.CompiledModel) -> None:
        self.compiled = compiled
        self.input_names = [p.get_any_name() for p in compiled.inputs]
        self.output_names = [p.get_any_name() for p in compiled.outputs]

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        result = self.compiled(dict(inputs))
        return [np.asarray(result[o]) for o in self.compiled.outputs]


def _manifest(folder: Path) -> dict[str, Any]:
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("backend") != BACKEND:
        raise SerializationError(f"{os.fspath(folder)!r} is not a quantir {BACKEND} artifact")
    return manifest


def load(artifact_dir: str | os.PathLike[str], *, threads: int | None = None) -> OvRunner:
    """The artifact compiled on OpenVINO's CPU plugin."""
    folder = Path(artifact_dir)
    manifest = _manifest(folder)
    runtime = dict(manifest.get("openvino", {}).get("runtime_config", {}))  # e.g. dynamic quantization's group size
    return compile_cpu(folder / manifest.get("model", MODEL_FILE), threads=threads, config=runtime)


CPU_CONFIG: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}
"""How quantir compiles on the CPU plugin. On CPUs with AMX or AVX512-BF16 the plugin's default runs every float
op in bf16, which is not the IR's float semantics: on magika the artifact then differed from its own fake-quant
reference by 0.37 relative (0.002 with f32). Float ops run in f32; the int8 kernels are unaffected. The plugin
also quantizes the activations of a compressed-weight FullyConnected to int8 on the fly by default (dynamic
quantization, groups of 32), which a weight-only IR does not say: off (measured: a u4 MLP then matched the
formula to 1e-5; with it, 0.04 off)."""


def compile_cpu(
    model: str | os.PathLike[str], *, threads: int | None = None, config: dict[str, Any] | None = None
) -> OvRunner:
    """An OpenVINO IR or ONNX model (e.g. a float baseline) compiled on the CPU plugin with `CPU_CONFIG`, updated
    by `config` (an artifact's runtime properties)."""
    config = dict(CPU_CONFIG) | dict(config or {}) | ({} if threads is None else {"INFERENCE_NUM_THREADS": threads})
    try:
        return OvRunner(ov.Core().compile_model(os.fspath(model), "CPU", config))
    except Exception as e:  # OpenVINO's own exception types
        raise SerializationError(f"OpenVINO cannot compile {os.fspath(model)!r} on CPU: {e}") from e


def _rt(info: Any, key: str) -> str:
    return str(info[key].astype(str)) if key in info else ""


def runtime_nodes(compiled: ov.CompiledModel) -> list[dict[str, Any]]:
    """Every runtime node of a compiled model: layerType, runtimePrecision, primitiveType, originalLayersNames."""
    rows = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        rows.append({"name": op.get_friendly_name(), "layer": _rt(info, "layerType"),
                     "precision": _rt(info, "runtimePrecision"), "primitive": _rt(info, "primitiveType"),
                     "original": [s for s in _rt(info, "originalLayersNames").split(",") if s]})  # fmt: skip
    return rows


def _owner(rows: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The heavy runtime node that lists IR node `name` (or one of its `name/...` parts) among its originals."""
    for row in rows:
        heavy = row["layer"] in COVERAGE_LAYERS or row["layer"] == FUSED_SUBGRAPH
        if heavy and any(o == name or o.startswith(name + "/") for o in row["original"]):  # names may hold "/"
            return row
    return None


_RUNTIME_KINDS = {
    "Conv": ("Convolution", "GroupConvolution"),
    "ConvTranspose": ("Deconvolution",),
    "MatMul": ("FullyConnected", "MatMul"),
    "Gemm": ("FullyConnected", "MatMul"),
}
"""The CPU plugin's runtime layer types an IR op becomes."""


def _unowned_heavy(rows: list[dict[str, Any]], owned: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Heavy runtime nodes (in execution order) that no IR node name claimed."""
    taken = {id(r) for r in owned}
    return [r for r in rows if r["layer"] in COVERAGE_LAYERS and id(r) not in taken]


def _fp8_types(model: Path) -> str:
    """The destination types of the FakeConvert ops of an OpenVINO model ("f8e4m3", "f8e4m3/f8e5m2")."""
    ops = ov.Core().read_model(os.fspath(model)).get_ordered_ops()
    return "/".join(sorted({str(op.get_attributes()["destination_type"]) for op in ops
                            if op.get_type_name() == "FakeConvert"})) or "f8"  # fmt: skip


def verify_openvino(
    artifact_dir: str | os.PathLike[str], inputs: dict[str, np.ndarray], *, max_lsb: float = 1.0, max_rel: float = 2e-2
) -> VerifyReport:
    """Compile the artifact on CPU, read each quantized node's runtime kernel, and compare OpenVINO's outputs on
    `inputs` with the IR's fake-quant reference (ORT, no graph optimization).

    A quantized output agrees within `max_lsb` quantization steps; a float output within `max_rel` of the
    reference's largest magnitude (LPT requantizes intermediate activations in the kernel, so one-step rounding
    differences inside the network reach float outputs as small relative errors).
    """
    folder = Path(artifact_dir)
    manifest = _manifest(folder)
    runner = load(folder)
    compiled = runner.compiled
    rows = runtime_nodes(compiled)
    emulated = [u["name"] for u in manifest.get("quantized_nodes", []) if u.get("emulated")]
    report: VerifyReport
    if emulated:
        report = EmulatedVerifyReport(backend=BACKEND, artifact=folder, runtime=RUNTIME, runner=runner,
                                      emulated=emulated)  # fmt: skip
        max_rel = max(max_rel, FP8_MAX_REL)
        report.notes.append(FP8_NOTE.format(types=_fp8_types(folder / manifest.get("model", MODEL_FILE)),
                                            tol=max_rel))  # fmt: skip
    else:
        report = VerifyReport(backend=BACKEND, artifact=folder, runtime=RUNTIME, runner=runner)
    note = manifest.get("openvino", {}).get("patterns", {}).get("frontend_note")
    if note:
        report.notes.append(note)
    if manifest.get("openvino", {}).get("runtime_config", {}).get("DYNAMIC_QUANTIZATION_GROUP_SIZE"):
        max_rel = max(max_rel, DYNAMIC_MAX_REL)
        report.notes.append(
            f"the CPU plugin quantizes activations per batch at run time (dynamic quantization), "
            f"which the reference leaves float: outputs are compared within {DYNAMIC_MAX_REL:g}"
        )
    units = manifest.get("quantized_nodes", [])
    owners = [_owner(rows, u["name"]) for u in units]
    spare = _unowned_heavy(rows, [o for o in owners if o is not None])
    for u, row in zip(units, owners, strict=True):
        how = ""
        if row is None:  # the plugin renamed it (LPT names a fused conv after its Multiply): match by kind and order
            row = next((r for r in spare if r["layer"] in _RUNTIME_KINDS.get(u["op_type"], ())), None)
            if row is not None:
                spare.remove(row)
                how = " (matched by kind and order: the runtime node lost the IR name)"
        row = row or {}
        precision, primitive, layer = row.get("precision", ""), row.get("primitive", ""), row.get("layer", "")
        low = (is_weight_only_kernel(layer, precision) if u.get("weight_only")
               else is_int8_primitive(precision, primitive))  # fmt: skip
        if u.get("emulated"):
            report.nodes.append(KernelRow(u["name"], u["op_type"], u.get("module", ""), "f32 on FakeConvert (emulated)",
                                          f"emulated: {layer or '-'}", low, precision, primitive + how))  # fmt: skip
            continue
        report.nodes.append(KernelRow(u["name"], u["op_type"], u.get("module", ""), "", layer, low, precision,
                                      primitive + how))  # fmt: skip
    int8 = [r for r in rows if r["layer"] not in _NOT_KERNELS and is_int8_primitive(r["precision"], r["primitive"])]
    kernels = Counter(r["layer"] for r in int8)
    compressed = [n for n in report.nodes if n.int8 and n.actual == "FullyConnected"
                  and not is_int8_primitive(n.precision, n.detail.split(" ")[0])]  # fmt: skip
    for n in compressed:
        kernels[f"FullyConnected ({n.precision} weights)"] += 1
    report.kernels = dict(kernels)
    ref = run_all(ort_session(folder / manifest.get("reference", REFERENCE_FILE), level="none"), inputs)
    check_outputs(report, "OpenVINO", runner.output_names, runner(inputs), ref, manifest.get("outputs", {}), max_lsb,
                  max_rel)  # fmt: skip
    return report
