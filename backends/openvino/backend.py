"""The openvino backend as the contract describes it: OpenVINO IR (`model.xml`/`.bin`) whose Conv/MatMul run `_I8`
kernels on the CPU plugin. Importing this module does not import `openvino` (about 0.2 s): emit, verify and load
do, on first use."""

from __future__ import annotations

from functools import partial

from quantir.backends.contract import Backend, lazy
from quantir.backends.onnx_proto.artifact import manifest_file
from quantir.backends.openvino.capabilities import RUNTIME, TABLE, WEIGHT_ONLY
from quantir.backends.openvino.legalize import legalize_for_openvino
from quantir.ir import DType, Granularity, QuantSpec, Scheme

__all__ = ["BACKEND", "REFERENCE_FILE"]

REFERENCE_FILE = "model.qdq.onnx"
"""The QDQ ONNX model the emitter fed OpenVINO's frontend (the legalized IR's fake-quant semantics)."""
_VERIFY = "quantir.backends.openvino.verify"

BACKEND = Backend(
    name="openvino",
    aliases=("ov",),
    runtime=RUNTIME,
    runtime_package="openvino",
    convention="openvino",
    capabilities=TABLE,
    legalize=legalize_for_openvino,
    emit=lazy("quantir.backends.openvino.emit", "emit"),
    verify=lazy(_VERIFY, "verify_openvino"),
    load=lazy(_VERIFY, "load"),
    load_float=lazy(_VERIFY, "compile_cpu"),
    description="OpenVINO IR (model.xml + model.bin) whose Conv/MatMul run _I8 kernels on the CPU plugin",
    reference_model=partial(manifest_file, key="reference", default=REFERENCE_FILE),
    # OpenVINO's CPU int8 kernels: symmetric i8, per output channel, narrow range (NNCF's 255-level weights)
    weight_rule=QuantSpec(DType.I8, Scheme.SYM, Granularity.per_channel(0), "minmax", qmin=-127, qmax=127),
    folds_constant_math=(
        "OpenVINO's ONNX frontend folds a dequantized constant that no Conv/MatMul/Gemm reads as its weight (e.g. "
        "BatchNormalization's scale) into a float constant"
    ),
    weight_only=WEIGHT_ONLY,
)
