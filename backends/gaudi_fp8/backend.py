"""The gaudi_fp8 backend as the contract describes it: an INC-loadable FP8 checkpoint for Intel Gaudi 2/3
(safetensors with float8 weights and hp_dtype scales, config.json with `mode: "LOAD"`, INC's measurement JSON),
verified and loaded here by CPU emulation with torch's float8 casts. Importing this module imports no torch."""

from __future__ import annotations

from functools import partial

from quantir.backends.contract import Backend, lazy
from quantir.backends.gaudi_fp8.capabilities import RUNTIME, TABLE
from quantir.backends.gaudi_fp8.legalize import legalize_gaudi_fp8
from quantir.backends.onnx_proto.artifact import manifest_file

__all__ = ["BACKEND"]

_VERIFY = "quantir.backends.gaudi_fp8.verify"

BACKEND = Backend(
    name="gaudi_fp8",
    aliases=("gaudi", "inc_fp8", "hpu"),
    runtime=RUNTIME,
    runtime_package="torch",
    convention="ort",
    capabilities=TABLE,
    legalize=legalize_gaudi_fp8,
    emit=lazy("quantir.backends.gaudi_fp8.emit", "emit"),
    verify=lazy(_VERIFY, "verify_gaudi_fp8"),
    load=lazy(_VERIFY, "load"),
    description="INC FP8 checkpoint for Gaudi 2/3 (model.safetensors float8 + hp_dtype scales, config.json "
    "mode LOAD, measurement JSON); emulated on CPU with torch float8 casts",
    reference_model=partial(manifest_file, key="reference", default="model.qdq.onnx"),
    fp8_only=True,
)
