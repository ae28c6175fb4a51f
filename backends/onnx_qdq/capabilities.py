"""What ONNX Runtime's CPU EP runs as integer kernels, as data keyed by op type (onnxruntime-quantization.md §4).

A row says which node-unit kind an op forms (compute, drop or absorbed), which inputs must come from
DequantizeLinear, the fused kernel and its minimum opset; the functions below state the type constraints (8-bit
activations, s8 weights with zero point 0, int32 bias at s_x·s_w, Relu/Clip folding) as reasons fusion fails.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from quantir.backends.contract import CapabilityTable, OpCapability, WeightOnlyCapability
from quantir.backends.legality import EIGHT_BIT, describe_params, quant_type_of
from quantir.backends.onnx_proto import qdq
from quantir.backends.onnx_proto.opset_upgrade import OPSET_SIGNATURE_CHANGES
from quantir.ir import DType, GranularityKind, Node, QuantType, traits_of
from quantir.ir.quant_math import quantize
from quantir.ir.traits import UnitKind

__all__ = [
    "ACTIVATION_DTYPES",
    "ATTRIBUTE_RULES",
    "CAPABILITIES",
    "COVERAGE_KERNELS",
    "FP8_NOTE",
    "FP8_SESSION_CONFIG",
    "FUSED_KERNELS",
    "MIN_OPSET_BLOCKED",
    "MIN_OPSET_FP8",
    "MIN_OPSET_PER_AXIS",
    "MIN_OPSET_QDQ",
    "OPSET_SIGNATURE_CHANGES",
    "WEIGHT_DTYPES",
    "WEIGHT_ONLY",
    "RUNTIME",
    "TABLE",
    "Capability",
    "UnitKind",
    "bias_problem",
    "capability_of",
    "fold_problem",
    "fp8_kernel",
]


Capability = OpCapability
"""A row of the table: the contract's one capability shape."""

COMPUTE, DROP, ABSORBED = UnitKind.COMPUTE, UnitKind.DROP, UnitKind.ABSORBED

CAPABILITIES: dict[str, Capability] = {
    "Conv": Capability(COMPUTE, "QLinearConv", (0, 1)),
    "MatMul": Capability(COMPUTE, "QLinearMatMul", (0, 1), float_output_kernel="MatMulIntegerToFloat"),
    "Gemm": Capability(COMPUTE, "QGemm", (0, 1), float_output_kernel="QGemm"),
    "Add": Capability(COMPUTE, "QLinearAdd", (0, 1)),
    "Mul": Capability(COMPUTE, "QLinearMul", (0, 1)),
    "Concat": Capability(COMPUTE, "QLinearConcat", None),
    "Where": Capability(COMPUTE, "QLinearWhere", (1, 2)),
    "AveragePool": Capability(COMPUTE, "QLinearAveragePool"),
    "GlobalAveragePool": Capability(COMPUTE, "QLinearGlobalAveragePool"),
    "Sigmoid": Capability(COMPUTE, "QLinearSigmoid"),
    "LeakyRelu": Capability(COMPUTE, "QLinearLeakyRelu"),
    "Softmax": Capability(COMPUTE, "QLinearSoftmax"),
    **{op: Capability(DROP) for op in (
        "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Expand", "Tile", "Slice", "Gather",
        "GatherElements", "Resize", "DepthToSpace", "Split", "ReduceMin", "ReduceMax",
    )},
    "MaxPool": Capability(DROP, min_opset=12),
    "Relu": Capability(ABSORBED),
    "Clip": Capability(ABSORBED),
}  # fmt: skip
"""Ops ORT's CPU EP runs on integer data when wrapped in Q/DQ; every other op stays float."""

RUNTIME = "ONNX Runtime"
TABLE = CapabilityTable(RUNTIME, CAPABILITIES)
"""The table annotation reads (through the registry)."""

ACTIVATION_DTYPES = EIGHT_BIT
"""8-bit activations only: 16-bit, 4-bit and FP8 break integer compute units (FP8 units are emulated: FP8_NOTE).
S8 is rewritten to U8 on x86 (QDQS8ToU8)."""
WEIGHT_DTYPES = frozenset({DType.I8})
"""Symmetric s8 weights with zero point 0 (U8 activations x S8 weights on x86; S8 x S8 via the S8->U8 rewrite)."""

# QuantizeLinear/DequantizeLinear exist from opset 10, their `axis` (per-channel scales) from 13, `block_size` and
# 4-bit types from 21: one definition, the QDQ lowering's
MIN_OPSET_QDQ, MIN_OPSET_PER_AXIS, MIN_OPSET_BLOCKED = qdq.MIN_OPSET_QDQ, qdq.MIN_OPSET_PER_AXIS, qdq.MIN_OPSET_BLOCKED
MIN_OPSET_FP8 = qdq.MIN_OPSET_FP8
"""float8e4m3fn/float8e5m2 QuantizeLinear/DequantizeLinear (with `saturate`) exist from opset 19."""

FP8_NOTE = (
    "ONNX Runtime has no FP8 kernels on CPU: QuantizeLinear/DequantizeLinear({types}) run, the Conv/MatMul/Gemm "
    "runs in float (emulation)"
)
"""What ORT 1.32's CPU EP does with an FP8 unit (measured: the optimized model keeps QuantizeLinear ->
DequantizeLinear -> Conv, and DequantizeLinear(float8 weight, axis 0) -> Conv, at every optimization level; no
fusion exists for float8 in the CPU EP, its FP8 GEMM is CUDA-only: onnxruntime-quantization.md §5)."""


FP8_SESSION_CONFIG: dict[str, str] = {"session.disable_quant_qdq": "1"}
"""How an FP8 artifact must be loaded in ORT: without the QDQ graph transformers, which assume integer storage.
Measured on ORT 1.32 with the digits CNN: QDQPropagation copies a float8 Q/DQ pair back through Reshape and MaxPool
onto a Relu's output, and ReluQuantFusion then deletes that Relu (its rule "zero point = storage minimum, so Q
clamps like Relu" is false for float8, whose +0.0 zero point has negative codes below it): the logits differed from
the unoptimized model by 1.44 relative. With the transformers off (and the emitter's `Max(x, x)` between a Relu and
its own float8 Q, against ReluQuantFusion, which this switch does not turn off) the rest of the optimizer still
runs (constant folding turns the float8 weight DequantizeLinear into f32 initializers, Conv+Relu fuse) and agrees
within 0.009 relative: float summation order flips single FP8 roundings of later activations."""


def fp8_kernel(op_type: str) -> str:
    """What ORT runs for an FP8 unit of `op_type` (the `expected` of its verify row)."""
    return f"{op_type} in float on FP8 Q/DQ (emulated)"


def _float_attr(node: Node, name: str, default: float) -> float:
    value = node.attr(name, default)
    return float(value) if isinstance(value, (int, float)) else default


def _has_input(node: Node, index: int) -> bool:
    return len(node.inputs) > index and node.inputs[index] is not None


def _gemm_rule(node: Node) -> str | None:
    # QGemm folds beta into the int32 bias and alpha into the output scale only without a bias (checked against
    # ORT 1.32: alpha=0.5 without C fuses, with C it does not; transA fuses).
    if not _has_input(node, 2):
        return None
    beta, alpha = _float_attr(node, "beta", 1.0), _float_attr(node, "alpha", 1.0)
    if beta != 1.0:
        return f"Gemm beta={beta:g} prevents QGemm fusion"
    if alpha != 1.0:
        return f"Gemm alpha={alpha:g} with a bias prevents QGemm fusion"
    return None


ATTRIBUTE_RULES: dict[str, Callable[[Node], str | None]] = {"Gemm": _gemm_rule}
"""Attribute values that prevent fusion: a reason, or None when the node fuses."""

COVERAGE_KERNELS: dict[str, frozenset[str]] = {
    "Conv": frozenset({"QLinearConv", "ConvInteger"}),
    "MatMul": frozenset(
        {"QLinearMatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulInteger", "MatMulNBits"}
    ),
    "Gemm": frozenset({"QGemm"}),
}
"""The integer (and low-bit weight) kernels each heavy op may become; coverage counts these ops."""

FUSED_KERNELS: frozenset[str] = frozenset(
    {c.kernel for c in CAPABILITIES.values() if c.kernel}
    | {c.float_output_kernel for c in CAPABILITIES.values() if c.float_output_kernel}
    | {k for ks in COVERAGE_KERNELS.values() for k in ks}
)
"""Every integer kernel `verify` counts in ORT's optimized model."""


# ---- type constraints of a unit (each returns the reason fusion fails, or None) ---------------------------------


def bias_problem(node: Node, x: QuantType, w: QuantType, kernel: str) -> str | None:
    """A bias is a constant int32 with zero point 0 and scale s_x·s_w: the fused kernel assumes that scale."""
    index = traits_of(node.op_type, node.domain).bias
    b = node.inputs[index] if index is not None and index < len(node.inputs) else None
    if b is None:
        return None
    q = quant_type_of(b)
    if q is None or not b.is_constant:
        return f"bias %{b.name} of {node.op_type} is float; {kernel} needs an int32 bias (scale s_x·s_w, zero point 0)"
    if q.dtype is not DType.I32 or q.zero_point.any():
        return f"bias %{b.name} is quantized as {describe_params(q)}; {kernel} needs int32 with zero point 0"
    expected = np.float32(x.scale.reshape(())) * w.scale
    per_channel = w.granularity.kind is GranularityKind.PER_CHANNEL
    if per_channel and (q.granularity.kind is not GranularityKind.PER_CHANNEL or q.scale.shape != expected.shape):
        return f"bias %{b.name} must be quantized per channel like weight of {node.op_type}"
    if not np.allclose(q.scale, expected, rtol=1e-6, atol=0.0):
        return f"bias %{b.name} scale differs from s_x·s_w; {kernel} rescales the int32 bias by input and weight scales"
    return None


def _clip_bounds(node: Node) -> tuple[float, float] | None:
    """Clip's constant (min, max): inputs from opset 11, attributes before; None when not constant."""
    bounds: list[float] = []
    for i, attr, default in ((1, "min", -np.inf), (2, "max", np.inf)):
        v = node.inputs[i] if i < len(node.inputs) else None
        value = node.attr(attr, default)
        if v is not None:
            if v.const is None or v.const.size != 1:
                return None
            value = float(v.const.numpy().reshape(()))
        if not isinstance(value, (int, float)):
            return None
        bounds.append(float(value))
    return bounds[0], bounds[1]


def fold_problem(act: Node) -> str | None:
    """Why Relu/Clip `act` cannot be absorbed into the QuantizeLinear of its output, or None."""
    out = act.outputs[0]
    q = quant_type_of(out)
    if out is None or q is None:
        return f"{act.op_type} output is not quantized, so no QuantizeLinear can absorb it"
    if q.dtype.is_float:
        return f"{act.op_type} output %{out.name} is FP8: ORT has no FP8 kernel to fold it into, so it runs in float"
    if q.dtype not in ACTIVATION_DTYPES or q.granularity.kind is not GranularityKind.PER_TENSOR:
        return f"{act.op_type} output %{out.name} is not an 8-bit per-tensor activation"
    lo, hi = q.dtype.int_range  # QuantizeLinear saturates to the full storage range
    if act.op_type == "Relu":
        if int(q.zero_point.reshape(())) != lo:
            return (f"Relu output zero point {int(q.zero_point.reshape(()))} is not the {q.dtype} minimum {lo}, so "
                    "QuantizeLinear does not clamp like Relu")  # fmt: skip
        return None
    bounds = _clip_bounds(act)
    if bounds is None:
        return "Clip bounds are not constant, so Clip cannot fold into Q"
    full = dataclasses.replace(q, qmin=lo, qmax=hi)
    codes = quantize(np.array(bounds, np.float32), full)
    if int(codes[0]) != lo or int(codes[1]) != hi:
        return f"Clip range [{bounds[0]:g}, {bounds[1]:g}] is narrower than the quantized range of %{out.name}"
    return None


def capability_of(node: Node) -> Capability | None:
    """The row for `node`, or None when ORT has no integer execution for it."""
    if node.domain not in ("", "ai.onnx"):
        return None
    return CAPABILITIES.get(node.op_type)


WEIGHT_ONLY = WeightOnlyCapability("MatMulNBits", frozenset({"MatMul"}), (4, 8))
"""Weight-only MatMul: blocked DequantizeLinear (opset 21, int4/uint4/int8/uint8 along K) -> MatMul, which ORT's
level-2 optimizer fuses into com.microsoft::MatMulNBits (measured on ORT 1.32 for 4 and 8 bits, sym and asym). The
emitter writes MatMulNBits itself where its block rules allow (`backends.onnx_qdq.matmul_nbits`)."""
