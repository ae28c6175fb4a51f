"""The openvino backend as the contract describes it: OpenVINO IR (`model.xml`/`.bin`) whose Conv/MatMul run `_I8`
kernels on the CPU plugin. Importing this module does not import `openvino` (about 0.2 s): emit, verify and load
do, on first use."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from quantir.backends.contract import Backend, Runner, VerifyReport
from quantir.backends.openvino.capabilities import RUNTIME, TABLE
from quantir.backends.openvino.legalize import legalize_for_openvino
from quantir.ir import DType, Granularity, Graph, QuantSpec, Scheme

__all__ = ["BACKEND"]

REFERENCE_FILE = "model.qdq.onnx"


def _emit(graph: Graph, out_dir: str | os.PathLike[str], *, manifest: dict[str, Any]) -> Path:
    from quantir.backends.openvino.emit import emit

    return emit(graph, out_dir, manifest=manifest)


def _verify(artifact_dir: str | os.PathLike[str], inputs: dict[str, np.ndarray], **options: Any) -> VerifyReport:
    from quantir.backends.openvino.verify import verify_openvino

    return verify_openvino(artifact_dir, inputs, **options)


def _load(artifact_dir: Path, *, threads: int | None = None) -> Runner:
    from quantir.backends.openvino.verify import load

    return load(artifact_dir, threads=threads)


def _load_float(model: Path, *, threads: int | None = None) -> Runner:
    from quantir.backends.openvino.verify import compile_cpu

    return compile_cpu(model, threads=threads)


def _reference(artifact_dir: Path) -> Path:
    """The QDQ ONNX model the emitter fed OpenVINO's frontend (the legalized IR's fake-quant semantics)."""
    from quantir.backends.onnx_proto.artifact import read_manifest

    return artifact_dir / str((read_manifest(artifact_dir) or {}).get("reference", REFERENCE_FILE))


BACKEND = Backend(
    name="openvino",
    aliases=("ov",),
    runtime=RUNTIME,
    convention="openvino",
    capabilities=TABLE,
    legalize=legalize_for_openvino,
    emit=_emit,
    verify=_verify,
    load=_load,
    load_float=_load_float,
    description="OpenVINO IR (model.xml + model.bin) whose Conv/MatMul run _I8 kernels on the CPU plugin",
    reference_model=_reference,
    # OpenVINO's CPU int8 kernels: symmetric i8, per output channel, narrow range (NNCF's 255-level weights)
    weight_rule=QuantSpec(DType.I8, Scheme.SYM, Granularity.per_channel(0), "minmax", qmin=-127, qmax=127),
    folds_constant_math=(
        "OpenVINO's ONNX frontend folds a dequantized constant that no Conv/MatMul/Gemm reads as its weight (e.g. "
        "BatchNormalization's scale) into a float constant"
    ),
)
