"""Check an ONNX QDQ artifact in ONNX Runtime: which quantized nodes really became integer kernels, and whether
the fused model computes what the QDQ model (the IR's fake-quant semantics) computes.

ORT names a fused kernel after its target node (checked on ORT 1.32 for QLinearConv, QGemm, QLinearMatMul,
MatMulIntegerToFloat, QLinearAdd and QLinearConcat), and the emitter gives every node a unique name, so IR nodes
are found in the optimized model by name.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from quantir.backends.contract import DYNAMIC_MAX_REL, KernelRow, VerifyReport, compare_output
from quantir.backends.onnx_proto.runtime import OptLevel, OrtRunner, ort_session
from quantir.backends.onnx_qdq.capabilities import COVERAGE_KERNELS, FUSED_KERNELS, RUNTIME
from quantir.backends.onnx_qdq.emit import MODEL_FILE, read_manifest
from quantir.ir import SerializationError

__all__ = ["VerifyReport", "load", "verify_onnx_qdq"]

_LEFTOVER = ("QuantizeLinear", "DequantizeLinear", "Conv", "MatMul", "Gemm")
"""Ops reported as left unfused: float Q/DQ kernels and float heavy ops."""


def _runs_integer(op_type: str, actual: str) -> bool:
    """Whether the ORT node `actual` is an integer kernel for an IR node of `op_type` (heavy ops: one of theirs)."""
    return actual in COVERAGE_KERNELS.get(op_type, FUSED_KERNELS)


def _session(model: Path, level: OptLevel, optimized: Path | None = None) -> Any:
    try:
        return ort_session(model, level=level, optimized_to=optimized)
    except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise SerializationError(f"ONNX Runtime cannot load {os.fspath(model)!r}: {e}") from e


def _optimized_ops(model: Path) -> dict[str, str]:
    """Node name -> op type in ORT's optimized model (graph level 2, where the QDQ fusions run)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "optimized.onnx"
        _session(model, "extended", path)
        opt = onnx.load(os.fspath(path), load_external_data=False)
    return {n.name or f"<unnamed {i}>": n.op_type for i, n in enumerate(opt.graph.node)}


def _model_file(folder: Path) -> Path:
    manifest = read_manifest(folder)
    if manifest is None:
        raise SerializationError(f"{os.fspath(folder)!r} is not a quantir artifact (no readable quantir.json)")
    return folder / manifest.get("model", MODEL_FILE)


def load(artifact_dir: str | os.PathLike[str], *, threads: int | None = None) -> OrtRunner:
    """The artifact's model in an ORT CPU session with every optimization (fused integer kernels)."""
    model = _model_file(Path(artifact_dir))
    return load_onnx(model, threads=threads)


def load_onnx(model: str | os.PathLike[str], *, threads: int | None = None) -> OrtRunner:
    """Any ONNX model (a float baseline, or the artifact's) in an ORT CPU session with every optimization."""
    try:
        return OrtRunner(model, level="all", threads=threads)
    except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise SerializationError(f"ONNX Runtime cannot load {os.fspath(model)!r}: {e}") from e


def verify_onnx_qdq(
    artifact_dir: str | os.PathLike[str],
    inputs: dict[str, np.ndarray],
    *,
    float_model: str | os.PathLike[str] | None = None,
    max_lsb: float = 1.0,
    max_rel: float = 1e-2,
) -> VerifyReport:
    """Check the artifact's model with `onnx.checker` (full check), load it in ORT, count fused integer kernels, and
    run it fused and unfused on `inputs`.

    A quantized output disagrees when fused and unfused differ by more than `max_lsb` quantization steps; a float
    output when they differ by more than `max_rel` of the output's magnitude. `float_model` (a float ONNX file with
    the same inputs and outputs) adds each output's distance from float, for information.
    """
    folder = Path(artifact_dir)
    model = _model_file(folder)
    manifest = read_manifest(folder) or {}
    try:
        onnx.checker.check_model(os.fspath(model), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise SerializationError(f"the QDQ model {os.fspath(model)!r} fails onnx.checker: {e}") from e
    ops = _optimized_ops(model)
    counts = Counter(ops.values())
    report = VerifyReport(
        backend=str(manifest.get("backend", "")),
        artifact=folder,
        runtime=RUNTIME,
        kernels={k: n for k, n in counts.items() if k in FUSED_KERNELS},
        leftover={k: counts[k] for k in _LEFTOVER if counts[k]},
    )
    expected = {u["name"]: u for u in manifest.get("quantized_nodes", [])}
    for name, u in expected.items():
        actual = ops.get(name, "")
        report.nodes.append(KernelRow(name, u["op_type"], u.get("module", ""), u.get("kernel", ""), actual,
                                      _runs_integer(u["op_type"], actual)))  # fmt: skip
    report.unmatched_kernels = sorted(n for n, op in ops.items() if op in FUSED_KERNELS and n not in expected)
    report.runner = runner = load(folder)
    names = runner.output_names
    fused = runner(inputs)
    if manifest.get("dynamic"):  # see DYNAMIC_MAX_REL
        max_rel = max(max_rel, DYNAMIC_MAX_REL)
        report.notes.append(f"activations are quantized per batch at run time: outputs are compared within "
                            f"{DYNAMIC_MAX_REL:g} of their magnitude (a scale that moves with the batch turns float "
                            "rounding differences between graph optimization levels into whole steps)")  # fmt: skip
    reference = folder / manifest.get("reference", model.name)  # MatMulNBits models keep their DQ form beside
    ref = _session(reference, "none").run(names, inputs)
    floats: list[Any] = [None] * len(names)
    if float_model is not None:
        floats = _session(Path(float_model), "all").run(names, inputs)
    infos = manifest.get("outputs", {})
    for name, a, b, f in zip(names, fused, ref, floats):
        row = compare_output(name, np.asarray(a), np.asarray(b), infos.get(name, {}), max_lsb, max_rel, f)
        report.outputs.append(row)
        if not row.ok:
            what = f"{row.lsb:.3g} LSB" if row.lsb is not None else f"{row.rel:.3g} relative"
            report.disagreements.append(f"output {name!r}: fused and unfused ORT differ by {what}")
    return report
