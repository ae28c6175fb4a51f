"""The ipex backend as the contract describes it: a frozen TorchScript int8 model (explicit quantize/dequantize in
the pattern IPEX's JIT fuses) plus IPEX's qconf-summary JSON keyed by the user's module paths. Importing this
module imports no torch."""

from __future__ import annotations

from functools import partial

from quantir.backends.contract import Backend, lazy
from quantir.backends.ipex.capabilities import RUNTIME, TABLE
from quantir.backends.onnx_proto.artifact import manifest_file
from quantir.backends.torch_codegen.legalize import legalize_for_torch
from quantir.ir import DType, Granularity, QuantSpec, Scheme

__all__ = ["BACKEND"]

_VERIFY = "quantir.backends.ipex.verify"

BACKEND = Backend(
    name="ipex",
    aliases=("intel_extension_for_pytorch", "torchscript"),
    runtime=RUNTIME,
    runtime_package="torch",
    convention="ipex",
    capabilities=TABLE,
    legalize=partial(legalize_for_torch, table=TABLE),
    emit=lazy("quantir.backends.ipex.emit", "emit"),
    verify=lazy(_VERIFY, "verify_ipex"),
    load=lazy(_VERIFY, "load"),
    description="frozen TorchScript int8 model (model.pt) + IPEX qconf summary (qconf.json)",
    reference_model=partial(manifest_file, key="reference", default="model.qdq.onnx"),
    # IPEX's default weights: PerChannelMinMaxObserver, qint8 per_channel_symmetric (-128..127)
    weight_rule=QuantSpec(DType.I8, Scheme.SYM, Granularity.per_channel(0), "minmax", qmin=-128, qmax=127),
)
