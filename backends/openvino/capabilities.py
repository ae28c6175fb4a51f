"""What OpenVINO's CPU plugin runs in int8, as tables (reference: nncf-and-openvino.md §1, "What the CPU plugin
needs (LPT)" and the measured table; re-measured on OpenVINO 2026.4.1 with the digits CNN).

LPT splits every FakeQuantize into an integer-range quantize plus a dequantize it pushes through supported ops,
so integers reach Conv/MatMul. That works only when the activation FakeQuantize in front of the op is per tensor
with 256 (or 255) levels and the weights are symmetric (zero point 0) int8, per output channel or per tensor.
Everything else runs FP32, silently; these tables are the reasons `legalize_for_openvino` reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from quantir.ir import DType
from quantir.ir.traits import UnitKind

__all__ = [
    "ACT_ACT_MATMUL", "ACTIVATION_DTYPES", "COVERAGE_LAYERS", "FLOAT_OUTPUT_OK", "INT8_PRECISIONS", "INT8_SUFFIX",
    "RUNTIME", "UNITS", "WEIGHT_DTYPES", "WEIGHT_INPUTS_ONLY", "is_int8_primitive",
]  # fmt: skip

RUNTIME = "OpenVINO (CPU plugin)"

UNITS: Mapping[str, UnitKind] = MappingProxyType({
    # int8 kernels behind a per-tensor activation FakeQuantize (LPT's Convolution/MatMul/FullyConnected)
    "Conv": UnitKind.COMPUTE, "ConvTranspose": UnitKind.COMPUTE, "MatMul": UnitKind.COMPUTE,
    "Gemm": UnitKind.COMPUTE,
    # LPT moves the dequantize through these, so they run on u8 data (measured: residual Add fused into the conv)
    "Add": UnitKind.COMPUTE, "Mul": UnitKind.COMPUTE, "AveragePool": UnitKind.COMPUTE,
    "GlobalAveragePool": UnitKind.COMPUTE,
    # quantization-agnostic data movement (NNCF QUANTIZATION_AGNOSTIC; Concat runs `Concatenation u8`)
    "MaxPool": UnitKind.DROP, "Reshape": UnitKind.DROP, "Flatten": UnitKind.DROP, "Transpose": UnitKind.DROP,
    "Squeeze": UnitKind.DROP, "Unsqueeze": UnitKind.DROP, "Concat": UnitKind.DROP, "Split": UnitKind.DROP,
    "Slice": UnitKind.DROP, "Gather": UnitKind.DROP, "Pad": UnitKind.DROP,
    # fused into the producing conv (Conv -> ReLU -> FQ requantizes inside the int8 kernel)
    "Relu": UnitKind.ABSORBED, "Clip": UnitKind.ABSORBED,
})  # fmt: skip
"""IR op type -> how it takes part in an int8 region on OpenVINO's CPU plugin (read by annotate via `target`)."""

WEIGHT_INPUTS_ONLY = frozenset({"MatMul"})
"""MatMul is quantized only with a constant weight: activation x activation MatMul runs FP32 (see ACT_ACT_MATMUL)."""

FLOAT_OUTPUT_OK = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
"""The int8 kernel does not need a FakeQuantize after it: dequantization is fused into the kernel's output."""

ACT_ACT_MATMUL = (
    "activation x activation MatMul runs FP32 in OpenVINO's CPU plugin without AMX/avx2_vnni_2 (measured: both "
    "inputs FakeQuantized -> FP32); its input FakeQuantizes would only add rounding, so it stays float"
)

ACTIVATION_DTYPES = frozenset({DType.U8, DType.I8})
"""Activation storage LPT turns into an integer-range FakeQuantize with 256 levels (i8 is shifted to u8)."""

WEIGHT_DTYPES = frozenset({DType.I8})
"""Weight storage the CPU int8 kernels take (i8 Constant -> Convert -> Multiply, zero point 0)."""

COVERAGE_LAYERS = frozenset({"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul"})
"""Runtime `layerType`s of the CPU plugin that a quantized IR Conv/MatMul/Gemm becomes."""

INT8_PRECISIONS = frozenset({"u8", "i8"})
"""`runtimePrecision` of a node that runs an int8 kernel."""

INT8_SUFFIX = "_i8"
"""`primitiveType` of int8 kernels ends in `_I8` (brgconv_avx512_I8, jit_avx2_I8, undef_I8 for FullyConnected)."""


def is_int8_primitive(precision: str, primitive: str) -> bool:
    """Whether a runtime node with this `runtimePrecision` and `primitiveType` runs an int8 kernel."""
    return precision.lower() in INT8_PRECISIONS and primitive.lower().endswith(INT8_SUFFIX)
