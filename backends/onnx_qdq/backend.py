"""The onnx_qdq backend as the contract describes it: QuantizeLinear/DequantizeLinear ONNX models that ONNX
Runtime's CPU EP fuses into integer kernels. Importing this module imports no runtime."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from quantir.backends.contract import Backend, Runner, VerifyReport
from quantir.backends.onnx_qdq.capabilities import RUNTIME, TABLE
from quantir.backends.onnx_qdq.emit import MODEL_FILE, emit
from quantir.backends.onnx_qdq.legalize import legalize_for_onnx_qdq
from quantir.ir import DType, Granularity, QuantSpec, Scheme

__all__ = ["BACKEND"]


def _verify(artifact_dir: str | os.PathLike[str], inputs: dict[str, np.ndarray], **options: Any) -> VerifyReport:
    from quantir.backends.onnx_qdq.verify import verify_onnx_qdq

    return verify_onnx_qdq(artifact_dir, inputs, **options)


def _load(artifact_dir: Path, *, threads: int | None = None) -> Runner:
    from quantir.backends.onnx_qdq.verify import load

    return load(artifact_dir, threads=threads)


def _load_float(model: Path, *, threads: int | None = None) -> Runner:
    from quantir.backends.onnx_qdq.verify import load_onnx

    return load_onnx(model, threads=threads)


def _reference(artifact_dir: Path) -> Path:
    """The artifact's model is itself the QDQ graph of the legalized IR."""
    from quantir.backends.onnx_proto.artifact import read_manifest

    return artifact_dir / str((read_manifest(artifact_dir) or {}).get("model", MODEL_FILE))


BACKEND = Backend(
    name="onnx_qdq",
    aliases=("onnx-qdq", "ort", "onnxruntime"),
    runtime=RUNTIME,
    convention="ort",
    capabilities=TABLE,
    legalize=legalize_for_onnx_qdq,
    emit=emit,
    verify=_verify,
    load=_load,
    load_float=_load_float,
    description="ONNX QDQ model (model.onnx) that ONNX Runtime's CPU EP runs as fused integer kernels",
    reference_model=_reference,
    # ONNX Runtime's QDQ default for int8 weights: symmetric i8 per channel (quantize_static's ±127 range)
    weight_rule=QuantSpec(DType.I8, Scheme.SYM, Granularity.per_channel(0), "minmax", qmin=-127, qmax=127),
    int32_bias=True,
)
