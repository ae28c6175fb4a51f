"""The onnx_qdq backend as the contract describes it: QuantizeLinear/DequantizeLinear ONNX models that ONNX
Runtime's CPU EP fuses into integer kernels. Importing this module imports no runtime."""

from __future__ import annotations

from functools import partial

from quantir.backends.contract import Backend, lazy
from quantir.backends.onnx_proto.artifact import manifest_file
from quantir.backends.onnx_qdq.capabilities import RUNTIME, TABLE, WEIGHT_ONLY
from quantir.backends.onnx_qdq.emit import MODEL_FILE, emit
from quantir.backends.onnx_qdq.legalize import legalize_for_onnx_qdq
from quantir.ir import DType, Granularity, QuantSpec, Scheme

__all__ = ["BACKEND"]

_VERIFY = "quantir.backends.onnx_qdq.verify"

BACKEND = Backend(
    name="onnx_qdq",
    aliases=("onnx-qdq", "ort", "onnxruntime"),
    runtime=RUNTIME,
    runtime_package="onnxruntime",
    convention="ort",
    capabilities=TABLE,
    legalize=legalize_for_onnx_qdq,
    emit=emit,
    verify=lazy(_VERIFY, "verify_onnx_qdq"),
    load=lazy(_VERIFY, "load"),
    load_float=lazy(_VERIFY, "load_onnx"),
    description="ONNX QDQ model (model.onnx) that ONNX Runtime's CPU EP runs as fused integer kernels",
    # the model itself is the QDQ graph, except where weight-only MatMuls became MatMulNBits (model.qdq.onnx beside)
    reference_model=partial(manifest_file, key="reference", default=MODEL_FILE),
    # ONNX Runtime's QDQ default for int8 weights: symmetric i8 per channel (quantize_static's ±127 range)
    weight_rule=QuantSpec(DType.I8, Scheme.SYM, Granularity.per_channel(0), "minmax", qmin=-127, qmax=127),
    int32_bias=True,
    weight_only=WEIGHT_ONLY,
)
