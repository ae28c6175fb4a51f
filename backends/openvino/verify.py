"""Check an OpenVINO artifact on the CPU plugin: which quantized Conv/MatMul/Gemm really run an int8 kernel
(`runtimePrecision` u8/i8 and a `primitiveType` ending in `_I8` in the compiled model's runtime graph), and whether
OpenVINO computes what the IR's fake-quant semantics compute (the QDQ reference run in ORT with ORT_DISABLE_ALL).

Runtime nodes are mapped back to IR nodes through `originalLayersNames`: the frontend names the parts of an IR node
`<node>` or `<node>/WithoutBiases/...`, and the plugin lists every op it fused into a runtime node there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from quantir.backends.onnx_proto import ort_session, run_all
from quantir.backends.onnx_proto.artifact import read_manifest
from quantir.backends.openvino.capabilities import COVERAGE_LAYERS, is_int8_primitive
from quantir.backends.openvino.emit import MODEL_FILE, REFERENCE_FILE
from quantir.ir import SerializationError

__all__ = ["OVNodeRow", "OVOutputRow", "OVVerifyReport", "runtime_nodes", "verify_openvino"]


@dataclass(frozen=True, slots=True)
class OVNodeRow:
    """One quantized IR compute node and the CPU plugin's runtime node for it."""

    name: str
    op_type: str
    module: str
    layer: str = ""
    """Runtime `layerType` (Convolution, FullyConnected...), "" when no runtime node lists the IR node."""
    precision: str = ""
    primitive: str = ""

    @property
    def int8(self) -> bool:
        return is_int8_primitive(self.precision, self.primitive)


@dataclass(frozen=True, slots=True)
class OVOutputRow:
    """OpenVINO vs the ORT fake-quant reference for one output."""

    name: str
    max_abs: float
    lsb: float | None
    """max_abs in output quantization steps, when the output is quantized."""
    rel: float
    """max_abs relative to the reference's largest magnitude."""
    ok: bool


@dataclass(slots=True)
class OVVerifyReport:
    """What the CPU plugin made of an artifact: per-node kernels, int8 coverage, output agreement."""

    nodes: list[OVNodeRow] = field(default_factory=list)
    outputs: list[OVOutputRow] = field(default_factory=list)
    coverage: float | None = None
    """Share of quantized Conv/MatMul/Gemm with constant weights whose runtime node runs an `_I8` kernel."""
    _compiled: Any = field(default=None, repr=False, compare=False)

    @property
    def missed(self) -> list[OVNodeRow]:
        return [r for r in self.nodes if not r.int8]

    @property
    def ok(self) -> bool:
        return not self.missed and all(o.ok for o in self.outputs)

    def coverage_text(self) -> str:
        if self.coverage is None:
            return "n/a (no quantized Conv/MatMul/Gemm)"
        return f"{self.coverage:.0%} ({len(self.nodes) - len(self.missed)}/{len(self.nodes)} Conv/MatMul/Gemm in _I8)"

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the compiled CPU model on `inputs` (outputs in model order)."""
        result = self._compiled(inputs)
        return [np.asarray(result[o]) for o in self._compiled.outputs]

    def format(self) -> str:
        lines = [f"int8 coverage: {self.coverage_text()}"]
        lines += [f"  {r.name} ({r.op_type} {r.module}): {r.layer or '-'} {r.precision or '-'} {r.primitive or '-'}"
                  f"{'' if r.int8 else '  NOT int8'}" for r in self.nodes]  # fmt: skip
        lines += [f"output {o.name}: max |ov - reference| {o.max_abs:.3g}"
                  + (f" ({o.lsb:.3g} LSB)" if o.lsb is not None else f" (relative {o.rel:.3g})")
                  + ("" if o.ok else "  DISAGREES") for o in self.outputs]  # fmt: skip
        return "\n".join(lines)


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
        if row["layer"] in COVERAGE_LAYERS and any(o == name or o.split("/")[0] == name for o in row["original"]):
            return row
    return None


def verify_openvino(
    artifact_dir: str | os.PathLike[str], inputs: dict[str, np.ndarray], *, max_lsb: float = 1.0, max_rel: float = 2e-2
) -> OVVerifyReport:
    """Compile the artifact on CPU, read each quantized node's runtime kernel, and compare OpenVINO's outputs on
    `inputs` with the IR's fake-quant reference (ORT, no graph optimization).

    A quantized output agrees within `max_lsb` quantization steps; a float output within `max_rel` of the
    reference's largest magnitude (LPT requantizes intermediate activations in the kernel, so one-step rounding
    differences inside the network reach float outputs as small relative errors).
    """
    folder = Path(artifact_dir)
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("backend") != "openvino":
        raise SerializationError(f"{os.fspath(folder)!r} is not a quantir openvino artifact")
    try:
        compiled = ov.Core().compile_model(os.fspath(folder / manifest.get("model", MODEL_FILE)), "CPU")
    except Exception as e:  # OpenVINO's own exception types
        raise SerializationError(f"OpenVINO cannot compile {os.fspath(folder)!r} on CPU: {e}") from e
    rows = runtime_nodes(compiled)
    report = OVVerifyReport(_compiled=compiled)
    for u in manifest.get("quantized_nodes", []):
        row = _owner(rows, u["name"]) or {}
        report.nodes.append(OVNodeRow(u["name"], u["op_type"], u.get("module", ""), row.get("layer", ""),
                                      row.get("precision", ""), row.get("primitive", "")))  # fmt: skip
    if report.nodes:
        report.coverage = sum(r.int8 for r in report.nodes) / len(report.nodes)
    ref = run_all(ort_session(folder / manifest.get("reference", REFERENCE_FILE), level="none"), inputs)
    got = compiled(inputs)
    infos = manifest.get("outputs", {})
    for port in compiled.outputs:
        name = port.get_any_name()
        a, b = np.asarray(got[port], np.float64), np.asarray(ref[name], np.float64)
        diff = float(np.max(np.abs(a - b), initial=0.0))
        rel = diff / max(float(np.max(np.abs(b), initial=0.0)), float(np.finfo(np.float32).tiny))
        info = infos.get(name, {})
        lsb = diff / min(float(s) for s in info["scale"]) if info.get("quantized") else None
        ok = lsb <= max_lsb if lsb is not None else rel <= max_rel
        report.outputs.append(OVOutputRow(name, diff, lsb, rel, ok))
    return report
