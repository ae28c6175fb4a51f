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

from quantir.backends.contract import CapabilityTable, OpCapability, WeightOnlyCapability
from quantir.ir import DType
from quantir.ir.traits import UnitKind

__all__ = [
    "ACT_ACT_MATMUL", "ACTIVATION_DTYPES", "COVERAGE_LAYERS", "FLOAT_OUTPUT_OK", "INT8_PRECISIONS", "INT8_SUFFIX",
    "RUNTIME", "TABLE", "UNITS", "WEIGHT_DTYPES", "WEIGHT_INPUTS_ONLY", "WEIGHT_ONLY", "WEIGHT_ONLY_PRECISIONS",
    "is_int8_primitive", "is_weight_only_kernel",
]  # fmt: skip

RUNTIME = "OpenVINO (CPU plugin)"

ACT_ACT_MATMUL = (
    "activation x activation MatMul runs FP32 in OpenVINO's CPU plugin without AMX/avx2_vnni_2 (measured: both "
    "inputs FakeQuantized -> FP32); its input FakeQuantizes would only add rounding, so it stays float"
)

_C, _D, _A = UnitKind.COMPUTE, UnitKind.DROP, UnitKind.ABSORBED

TABLE = CapabilityTable(RUNTIME, MappingProxyType({
    # int8 kernels behind a per-tensor activation FakeQuantize (LPT's Convolution/MatMul/FullyConnected); the
    # dequantization is fused into the kernel's output, so no FakeQuantize is needed after it
    "Conv": OpCapability(_C, "Convolution", float_output_kernel="Convolution"),
    "ConvTranspose": OpCapability(_C, "Deconvolution", float_output_kernel="Deconvolution"),
    "MatMul": OpCapability(_C, "FullyConnected", float_output_kernel="FullyConnected", weight_inputs_only=True,
                           float_reason=ACT_ACT_MATMUL),
    "Gemm": OpCapability(_C, "FullyConnected", float_output_kernel="FullyConnected"),
    # LPT moves the dequantize through these, so they run on u8 data (measured: residual Add fused into the conv)
    **{op: OpCapability(_C) for op in ("Add", "Mul", "AveragePool", "GlobalAveragePool")},
    # quantization-agnostic data movement (NNCF QUANTIZATION_AGNOSTIC; Concat runs `Concatenation u8`)
    **{op: OpCapability(_D) for op in (
        "MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice", "Gather",
        "Pad",
    )},
    # fused into the producing conv (Conv -> ReLU -> FQ requantizes inside the int8 kernel)
    "Relu": OpCapability(_A), "Clip": OpCapability(_A),
}))  # fmt: skip
"""IR op type -> how it takes part in an int8 region on OpenVINO's CPU plugin (read by annotate via the registry)."""

UNITS: Mapping[str, UnitKind] = MappingProxyType(TABLE.units)
WEIGHT_INPUTS_ONLY = TABLE.weight_inputs_only
FLOAT_OUTPUT_OK = TABLE.float_output_ok

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


WEIGHT_ONLY_PRECISIONS = frozenset({"i4", "u4", "i8", "u8"})
"""`runtimePrecision` of a FullyConnected that runs on compressed (weight-only) weights."""


def is_weight_only_kernel(layer: str, precision: str) -> bool:
    """Whether a runtime node runs a weight-only (compressed-weight) kernel: a FullyConnected whose runtime precision
    is the weight's low-bit type (its primitive is a float GEMM that decompresses the weights block by block)."""
    return layer == "FullyConnected" and precision.lower() in WEIGHT_ONLY_PRECISIONS


def is_int8_primitive(precision: str, primitive: str) -> bool:
    """Whether a runtime node with this `runtimePrecision` and `primitiveType` runs an int8 kernel."""
    return precision.lower() in INT8_PRECISIONS and primitive.lower().endswith(INT8_SUFFIX)


WEIGHT_ONLY = WeightOnlyCapability("FullyConnected with compressed weights", frozenset({"MatMul"}), (4, 8))
"""Weight-only MatMul: OpenVINO's ONNX frontend reads a blocked DequantizeLinear weight as an i4/u4/i8/u8 Constant ->
Convert -> (Subtract) -> Multiply chain, and the CPU plugin runs it as a FullyConnected whose `runtimePrecision` is
the compressed weight type (measured on OpenVINO 2026.4.1: i4, u4, i8, u8)."""
