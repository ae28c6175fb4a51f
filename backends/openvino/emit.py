"""Write a legalized quantized IR graph as an OpenVINO IR artifact folder: `model.xml` + `model.bin` +
`model.qdq.onnx` (the IR's fake-quant reference that `verify_openvino` runs in ONNX Runtime) + `quantir.json`.

The model is built with OpenVINO's own ONNX frontend from the shared QDQ lowering: activation Q -> DQ pairs become
one FakeQuantize (256 levels, per tensor) and int8 weight DequantizeLinear becomes an i8 Constant -> Convert ->
(Subtract) -> Multiply chain, exactly the patterns the CPU plugin's LPT runs in int8 (nncf-and-openvino.md §2).
The emitter checks that it got them, records provenance in each op's rt_info, and saves with
`compress_to_fp16=False` so no weight is stored as f16. The folder is written atomically.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import openvino as ov

from quantir.backends.legality import is_fp8, quant_type_of
from quantir.backends.onnx_proto import save_model
from quantir.backends.onnx_proto.artifact import SCHEMA as SCHEMA
from quantir.backends.onnx_proto.artifact import (
    check_destination,
    ir_sha256,
    manifest_text,
    output_quantization,
    write_artifact,
)
from quantir.backends.onnx_proto.qdq import lower_to_qdq, node_names
from quantir.backends.openvino.backend import REFERENCE_FILE
from quantir.backends.openvino.legalize import (
    DYNAMIC_RUNTIME_CONFIG,
    has_dynamic_units,
    is_fp8_unit,
    is_weight_only_unit,
    quantized_compute_units,
)
from quantir.ir import DType, Graph, QuantType, SerializationError

__all__ = ["BACKEND", "MODEL_FILE", "PROVENANCE_KEY", "REFERENCE_FILE", "emit", "ov_pattern_counts", "provenance"]

BACKEND = "openvino"
MODEL_FILE = "model.xml"

PROVENANCE_KEY = "quantir_source"
"""rt_info key of every OpenVINO op that comes from an IR node: `<node name>:<module path>:<module type>`; the
saved model keeps the map in its own rt_info under `quantir/provenance` (see `provenance`)."""
_RESERVED = ("schema", "backend", "model", "reference", "ir_sha256", "quantized_nodes", "outputs", "openvino")
_INT8 = frozenset({DType.I8, DType.U8})


def ov_pattern_counts(model: ov.Model) -> dict[str, int]:
    """FakeQuantize and FakeConvert ops, i8/u8, f8 and f16 Constants of an OpenVINO model."""
    counts: Counter[str] = Counter()
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind in ("FakeQuantize", "FakeConvert"):
            counts[kind] += 1
        elif kind == "Constant":
            et = op.get_element_type()
            if et in (ov.Type.i8, ov.Type.u8):
                counts["int8_constants"] += 1
            elif et in (ov.Type.f8e4m3, ov.Type.f8e5m2):
                counts["f8_constants"] += 1
            elif et == ov.Type.f16:
                counts["f16_constants"] += 1
    return dict(counts)


def provenance(model: ov.Model) -> dict[str, str]:
    """Friendly name -> `<IR node>:<module path>:<module type>` of a model written by `emit` (empty if none)."""
    if not model.has_rt_info(["quantir", "provenance"]):
        return {}
    return dict(json.loads(str(model.get_rt_info(["quantir", "provenance"]).astype(str))))


def _expected(graph: Graph) -> tuple[int, int]:
    """(quantized 8-bit activations, quantized 8-bit constants) of the legalized graph."""
    acts = consts = 0
    for v in graph.values():
        if isinstance(v.quant, QuantType) and v.quant.dtype in _INT8:
            if v.is_constant:
                consts += 1
            else:
                acts += 1
    return acts, consts


def _check_patterns(model: ov.Model, graph: Graph, out: Path) -> dict[str, Any]:
    """The int8 patterns OpenVINO's frontend produced, beside what the IR quantized: one FakeQuantize per quantized
    activation and an i8 Constant per quantized weight (other 8-bit constants, e.g. boolean masks cast to u8, may
    exist besides). A difference is recorded with its reason (`frontend_note`), not refused: the frontend may
    legitimately merge or move a FakeQuantize (a Concat's shared one), and whether an int8 kernel was lost is what
    `verify` reads from the compiled model. Refused only when the model has no int8 pattern at all."""
    counts: dict[str, Any] = dict(ov_pattern_counts(model))
    acts, consts = _expected(graph)
    # QuantizeLinear ops the IR keeps as ops (e.g. an imported Q -> Clip -> DQ with a narrowed range) are ONNX
    # semantics of their own; OpenVINO's frontend turns each into one more FakeQuantize.
    explicit = sum(n.op_type == "QuantizeLinear" and n.domain in ("", "ai.onnx") for n in graph.nodes)
    fq, i8 = counts.get("FakeQuantize", 0), counts.get("int8_constants", 0)
    kept = f" and {explicit} QuantizeLinear op(s) kept as ops" if explicit else ""
    if fq == 0 and i8 == 0 and acts + explicit + consts > 0:
        raise SerializationError(
            f"OpenVINO's ONNX frontend produced no int8 pattern for {os.fspath(out)!r}: no FakeQuantize for "
            f"{acts} quantized activations{kept} and no i8/u8 Constant for {consts} quantized weights"
        )
    fp8_acts = sum(1 for v in graph.values() if not v.is_constant and is_fp8(quant_type_of(v)))
    fp8_consts = sum(1 for v in graph.values() if v.is_constant and is_fp8(quant_type_of(v)))
    if fp8_acts + fp8_consts:
        fc, f8 = counts.get("FakeConvert", 0), counts.get("f8_constants", 0)
        if fc < fp8_acts or f8 < fp8_consts:
            raise SerializationError(
                f"OpenVINO's ONNX frontend made {fc} FakeConvert for {fp8_acts} FP8 activations and {f8} f8 Constants "
                f"for {fp8_consts} FP8 weights of {os.fspath(out)!r}; the FP8 QDQ model did not convert to FP8 ops"
            )
        counts["expected_fake_convert"], counts["expected_f8_constants"] = fp8_acts, fp8_consts
    counts["expected_fake_quantize"], counts["expected_int8_constants"] = acts + explicit, consts
    if fq != acts + explicit or i8 < consts:
        counts["frontend_note"] = (
            f"OpenVINO's ONNX frontend made {fq} FakeQuantize for {acts} quantized activations{kept} and {i8} i8/u8 "
            f"Constants for {consts} quantized weights (it merges or moves some, e.g. a Concat's shared one); the "
            "runtime check below says whether any int8 kernel was lost"
        )
    return counts


def _tag_provenance(model: ov.Model, graph: Graph) -> dict[str, str]:
    """rt_info `quantir_source` on every op whose friendly name is an IR node's name (or `<name>/...`, the
    frontend's name for a decomposed part such as `<name>/WithoutBiases`); returns friendly name -> source.

    IR v11 serializes only registered per-op rt_info attributes, so the same map is also stored in the model's
    rt_info (`quantir/provenance`, JSON), which `ov.save_model` writes and `read_model` restores."""
    sources: dict[str, str] = {}
    for node, name in zip(graph.nodes, node_names(graph)):
        src = node.source
        sources[name] = f"{name}:{src.module}:{src.module_type}" if src is not None else f"{name}::"
    tagged: dict[str, str] = {}
    for op in model.get_ordered_ops():
        friendly = op.get_friendly_name()
        key = friendly if friendly in sources else friendly.split("/")[0]
        if key in sources:
            op.get_rt_info()[PROVENANCE_KEY] = sources[key]
            tagged[friendly] = sources[key]
    return tagged


def _manifest(graph: Graph, counts: dict[str, int], manifest: dict[str, Any]) -> dict[str, Any]:
    clash = sorted(k for k in manifest if k in _RESERVED)
    if clash:
        raise SerializationError(f"manifest keys {clash} are written by the openvino emitter; rename them")
    names = dict(zip(graph.nodes, node_names(graph)))
    units = [{"name": names[n], "op_type": n.op_type, "module": n.source.module if n.source else "",
              **({"weight_only": True} if is_weight_only_unit(n) else {}),
              **({"emulated": True} if is_fp8_unit(n) else {})}
             for n in quantized_compute_units(graph)]  # fmt: skip
    doc: dict[str, Any] = {
        "schema": SCHEMA, "backend": BACKEND, "model": MODEL_FILE, "reference": REFERENCE_FILE,
        "ir_sha256": ir_sha256(graph), "quantized_nodes": units, "outputs": output_quantization(graph),
        "openvino": {"version": ov.get_version(), "patterns": counts,
                     "runtime_config": dict(DYNAMIC_RUNTIME_CONFIG) if has_dynamic_units(graph) else {}},
    }  # fmt: skip
    doc.update(manifest)
    return doc


def emit(graph: Graph, out_dir: str | os.PathLike[str], *, manifest: dict[str, Any]) -> Path:
    """Convert `graph` (legalized by `legalize_for_openvino`) with OpenVINO's ONNX frontend and write the artifact
    folder `out_dir` atomically; errors (unwritable path, missing int8 patterns) are `SerializationError`s."""
    out = Path(out_dir).absolute()
    check_destination(out)
    # OpenVINO has no WeightBiasQuantization to guard; it quantizes dynamic activations itself (runtime_config)
    lowered = lower_to_qdq(graph, guard_float_weights=False, dynamic=False)
    holder: dict[str, str] = {}

    def write(tmp: Path) -> None:
        save_model(lowered, tmp / REFERENCE_FILE)
        try:
            model = ov.convert_model(os.fspath(tmp / REFERENCE_FILE))
        except Exception as e:  # OpenVINO raises its own exception types (OpConversionFailure, GeneralFailure)
            raise SerializationError(f"OpenVINO cannot convert the QDQ model for {os.fspath(out)!r}: {e}") from e
        counts = _check_patterns(model, graph, out)
        model.set_rt_info(json.dumps(_tag_provenance(model, graph), sort_keys=True), ["quantir", "provenance"])
        model.set_rt_info(ir_sha256(graph), ["quantir", "ir_sha256"])
        ov.save_model(model, tmp / MODEL_FILE, compress_to_fp16=False)  # FQ models are never fp16-compressed
        holder["manifest"] = manifest_text(_manifest(graph, counts, manifest), out)

    return write_artifact(out, write, lambda: holder["manifest"])  # the manifest needs the converted model
