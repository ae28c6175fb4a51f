"""What INC's FP8 runs on Gaudi from a quantir checkpoint: the Linear and Conv2d modules it patches
(neural-compressor-and-gaudi-fp8.md §3), with FP8 inputs and weights and outputs in hp_dtype. Nothing else is FP8."""

from __future__ import annotations

from types import MappingProxyType

from quantir.backends.contract import CapabilityTable, OpCapability
from quantir.ir.traits import UnitKind

__all__ = ["KERNELS", "RUNTIME", "TABLE"]

RUNTIME = "Intel Gaudi (INC FP8; emulated on CPU with torch float8 casts)"
KERNELS = {"Gemm": "PatchedLinear (fp8_gemm_v2)", "MatMul": "PatchedLinear (fp8_gemm_v2)",
           "Conv": "PatchedConv2d (conv2d_fp8)"}  # fmt: skip

_FLOAT_OUT = {op: OpCapability(UnitKind.COMPUTE, k, float_output_kernel=k) for op, k in KERNELS.items()}
TABLE = CapabilityTable(RUNTIME, MappingProxyType(_FLOAT_OUT))
