"""The pt2e backend as the contract describes it: a `torch.export` program with PT2E's `quantized_decomposed` Q/DQ
that `torch.compile` (Inductor, freezing) lowers to oneDNN int8 kernels. Importing this module imports no torch."""

from __future__ import annotations

from functools import partial

from quantir.backends.contract import Backend, lazy
from quantir.backends.onnx_proto.artifact import manifest_file
from quantir.backends.pt2e.capabilities import RUNTIME, TABLE
from quantir.backends.torch_codegen.legalize import legalize_for_torch
from quantir.ir import DType, Granularity, QuantSpec, Scheme

__all__ = ["BACKEND"]

_VERIFY = "quantir.backends.pt2e.verify"

BACKEND = Backend(
    name="pt2e",
    aliases=("torch_pt2e", "torch-compile", "inductor"),
    runtime=RUNTIME,
    runtime_package="torch",
    convention="pytorch",
    capabilities=TABLE,
    legalize=partial(legalize_for_torch, table=TABLE),
    emit=lazy("quantir.backends.pt2e.emit", "emit"),
    verify=lazy(_VERIFY, "verify_pt2e"),
    load=lazy(_VERIFY, "load"),
    description="torch.export program (model.pt2) with PT2E Q/DQ that torch.compile lowers to oneDNN int8 kernels",
    reference_model=partial(manifest_file, key="reference", default="model.qdq.onnx"),
    # X86InductorQuantizer's weights: int8 symmetric per output channel, full range (-128..127)
    weight_rule=QuantSpec(DType.I8, Scheme.SYM, Granularity.per_channel(0), "minmax", qmin=-128, qmax=127),
)
