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
from quantir.backends.onnx_proto.emulation import EmulatedVerifyReport
from quantir.backends.onnx_proto.runtime import OptLevel, OrtRunner, ort_session
from quantir.backends.onnx_qdq.capabilities import (
    COVERAGE_KERNELS,
    FP8_NOTE,
    FP8_SESSION_CONFIG,
    FUSED_KERNELS,
    RUNTIME,
)
from quantir.backends.onnx_qdq.emit import MODEL_FILE, read_manifest
from quantir.ir import DType, Granularity, QuantType, Scheme, SerializationError
from quantir.ir.quant_math import quantize

__all__ = ["EmulatedVerifyReport", "VerifyReport", "fp8_rounding_mismatches", "load", "verify_onnx_qdq"]

_LEFTOVER = ("QuantizeLinear", "DequantizeLinear", "Conv", "MatMul", "Gemm")
"""Ops reported as left unfused: float Q/DQ kernels and float heavy ops."""


def _runs_integer(op_type: str, actual: str) -> bool:
    """Whether the ORT node `actual` is an integer kernel for an IR node of `op_type` (heavy ops: one of theirs)."""
    return actual in COVERAGE_KERNELS.get(op_type, FUSED_KERNELS)


def _session(model: Path, level: OptLevel, optimized: Path | None = None, config: dict[str, str] | None = None) -> Any:
    try:
        return ort_session(model, level=level, optimized_to=optimized, config=config)
    except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise SerializationError(f"ONNX Runtime cannot load {os.fspath(model)!r}: {e}") from e


def _optimized_ops(model: Path, config: dict[str, str] | None = None) -> dict[str, str]:
    """Node name -> op type in ORT's optimized model (graph level 2, where the QDQ fusions run)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "optimized.onnx"
        _session(model, "extended", path, config)
        opt = onnx.load(os.fspath(path), load_external_data=False)
    return {n.name or f"<unnamed {i}>": n.op_type for i, n in enumerate(opt.graph.node)}


def _model_file(folder: Path) -> Path:
    manifest = read_manifest(folder)
    if manifest is None:
        raise SerializationError(f"{os.fspath(folder)!r} is not a quantir artifact (no readable quantir.json)")
    return folder / manifest.get("model", MODEL_FILE)


def load(artifact_dir: str | os.PathLike[str], *, threads: int | None = None) -> OrtRunner:
    """The artifact's model in an ORT CPU session with every optimization (fused integer kernels), and the session
    config its manifest asks for (FP8: `FP8_SESSION_CONFIG`)."""
    folder = Path(artifact_dir)
    model = _model_file(folder)
    return load_onnx(model, threads=threads, config=_session_config(folder))


def _session_config(folder: Path) -> dict[str, str]:
    return {str(k): str(v) for k, v in (read_manifest(folder) or {}).get("session_config", {}).items()}


def load_onnx(
    model: str | os.PathLike[str], *, threads: int | None = None, config: dict[str, str] | None = None
) -> OrtRunner:
    """Any ONNX model (a float baseline, or the artifact's) in an ORT CPU session with every optimization."""
    try:
        return OrtRunner(model, level="all", threads=threads, config=config)
    except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise SerializationError(f"ONNX Runtime cannot load {os.fspath(model)!r}: {e}") from e


_FLOAT8 = {onnx.TensorProto.FLOAT8E4M3FN: DType.F8E4M3FN, onnx.TensorProto.FLOAT8E5M2: DType.F8E5M2}


def fp8_rounding_mismatches(model: Path, inputs: dict[str, np.ndarray]) -> dict[str, tuple[str, int, int]]:
    """Per float8 activation QuantizeLinear of `model` (per tensor): (its type, how many of its codes ORT computes
    differently from `quant_math.quantize` on `inputs`, how many codes). The model runs as written (no optimization)
    with each such Q's input and output exposed as graph outputs."""
    proto = onnx.load(os.fspath(model))
    inits = {t.name: t for t in proto.graph.initializer}
    checked: dict[str, tuple[DType, float, str]] = {}
    for n in proto.graph.node:
        zp = inits.get(n.input[2]) if n.op_type == "QuantizeLinear" and len(n.input) > 2 else None
        scale = inits.get(n.input[1]) if zp is not None else None
        if zp is None or scale is None or zp.data_type not in _FLOAT8 or len(scale.dims) != 0:
            continue
        checked[n.output[0]] = (_FLOAT8[zp.data_type], float(onnx.numpy_helper.to_array(scale)), n.input[0])
    if not checked:
        return {}
    outputs = {o.name for o in proto.graph.output}
    for q_out, (_, _, x) in checked.items():
        proto.graph.output.extend(onnx.ValueInfoProto(name=name) for name in (q_out, x) if name not in outputs)
        outputs |= {q_out, x}
    session = _session_bytes(proto.SerializeToString())
    names = sorted(outputs)
    got = dict(zip(names, session.run(names, inputs), strict=True))
    result: dict[str, tuple[str, int, int]] = {}
    for q_out, (dtype, scale, x) in checked.items():
        qtype = QuantType(dtype, Scheme.SYM, Granularity.per_tensor(), np.array(scale, np.float32), np.zeros(()), 0, 0)
        ours = quantize(got[x], qtype)
        theirs = np.asarray(got[q_out]).view(np.uint8)
        result[x] = (dtype.value, int(np.count_nonzero(ours != theirs)), int(ours.size))
    return result


def _session_bytes(model: bytes) -> Any:
    try:
        return ort_session(model, level="none")
    except Exception as e:  # ORT raises its own exception types
        raise SerializationError(f"ONNX Runtime cannot load the FP8 rounding check model: {e}") from e


def _check_fp8(report: VerifyReport, model: Path, inputs: dict[str, np.ndarray]) -> None:
    """The notes on FP8 emulation, and a disagreement wherever ORT's float8 rounding is not quant_math's."""
    checks = fp8_rounding_mismatches(model, inputs)
    types = "/".join(sorted({f"float8{t[2:]}" for t, _, _ in checks.values()})) or "float8"
    q, dq = report.leftover.get("QuantizeLinear", 0), report.leftover.get("DequantizeLinear", 0)
    report.notes.append(
        FP8_NOTE.format(types=types) + f"; its optimized model runs {q} QuantizeLinear and {dq} "
        "DequantizeLinear as float kernels, and has folded the float8 weights into f32 initializers"
    )
    config = ", ".join(f"{k}={v}" for k, v in FP8_SESSION_CONFIG.items())
    report.notes.append(f"load it with the session config {config}: ORT's QDQ transformers assume integer storage "
                        "and would delete a Relu in front of a float8 QuantizeLinear")  # fmt: skip
    values = sum(n for _, _, n in checks.values())
    bad = {x: (m, n) for x, (_, m, n) in checks.items() if m}
    for x, (m, n) in bad.items():
        report.disagreements.append(f"activation %{x}: ONNX Runtime's float8 QuantizeLinear gives {m} of {n} codes "
                                    "that differ from quant_math.quantize")  # fmt: skip
    if checks and not bad:
        report.notes.append(f"ONNX Runtime's float8 QuantizeLinear (saturate=1) gives quant_math's codes bit for bit "
                            f"on {len(checks)} activations ({values} values of these inputs)")  # fmt: skip


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
    ops = _optimized_ops(model, _session_config(folder))
    counts = Counter(ops.values())
    expected = {u["name"]: u for u in manifest.get("quantized_nodes", [])}
    emulated = [name for name, u in expected.items() if u.get("emulated")]
    report = (EmulatedVerifyReport if emulated else VerifyReport)(
        backend=str(manifest.get("backend", "")),
        artifact=folder,
        runtime=RUNTIME,
        kernels={k: n for k, n in counts.items() if k in FUSED_KERNELS},
        leftover={k: counts[k] for k in _LEFTOVER if counts[k]},
    )
    for name, u in expected.items():
        actual = ops.get(name, "")
        if u.get("emulated"):  # FP8: no kernel to count; say what ORT runs instead
            kernel = KernelRow(
                name,
                u["op_type"],
                u.get("module", ""),
                u.get("kernel", ""),
                f"emulated: float {actual or '(renamed by a fusion)'}",
                False,
                "f32",
                "on float8 Q/DQ outputs",
            )
        else:
            kernel = KernelRow(
                name,
                u["op_type"],
                u.get("module", ""),
                u.get("kernel", ""),
                actual,
                _runs_integer(u["op_type"], actual),
            )
        report.nodes.append(kernel)
    if emulated:
        assert isinstance(report, EmulatedVerifyReport)
        report.emulated = emulated
        _check_fp8(report, model, inputs)
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
