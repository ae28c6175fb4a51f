"""What torch's CPU int8 lowerings run in int8, as capability tables (ipex-and-pt2e.md §1 and §4).

Both fuse `dequantize(x), dequantize(w) -> conv/linear (-> relu) -> quantize` into one oneDNN int8 kernel: IPEX's
JIT (`ipex::LlgaFusionGroup`) and Inductor with freezing (`onednn.qconv_pointwise` / `onednn.qlinear_pointwise`).
Activations are per-tensor 8-bit (u8 asymmetric by default), weights s8 symmetric per output channel. Pooling and
flatten move int8 data between quantizers; Relu is fused into the kernel before it. Everything else runs float.
"""

from __future__ import annotations

from types import MappingProxyType

from quantir.backends.contract import CapabilityTable, OpCapability
from quantir.ir.traits import UnitKind

__all__ = ["ACT_ACT_MATMUL", "table"]

ACT_ACT_MATMUL = (
    "activation x activation MatMul has no int8 kernel in torch's default x86 recipes (X86InductorQuantizer and "
    "IPEX quantize only linear/conv by default); it runs float"
)

_C, _D, _A = UnitKind.COMPUTE, UnitKind.DROP, UnitKind.ABSORBED


def table(runtime: str, conv_kernel: str, linear_kernel: str) -> CapabilityTable:
    """The capability table of one torch int8 lowering, naming its kernels."""
    return CapabilityTable(runtime, MappingProxyType({
        "Conv": OpCapability(_C, conv_kernel, float_output_kernel=conv_kernel),
        "Gemm": OpCapability(_C, linear_kernel, float_output_kernel=linear_kernel),
        "MatMul": OpCapability(_C, linear_kernel, float_output_kernel=linear_kernel, weight_inputs_only=True,
                               float_reason=ACT_ACT_MATMUL),
        **{op: OpCapability(_D) for op in ("MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze")},
        "Relu": OpCapability(_A),
    }))  # fmt: skip
