"""The op-trait table: which inputs are weights (and their channel axis), which ops are quantizable,
scale-transparent, or need shared scales on their inputs. Adding an op is adding a row.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from quantir.ir.core import Node

__all__ = ["OpTraits", "UnitKind", "channel_axis", "traits_of", "weight_inputs"]


class UnitKind(enum.Enum):
    """How an op takes part in a quantized region of a target (each backend's capability table uses these)."""

    COMPUTE = "compute"
    """Runs as an integer kernel when its inputs (and output) are quantized: Conv, MatMul, Add..."""
    DROP = "drop"
    """Moves 8-bit data: its output shares its input's quantization (Reshape, MaxPool...)."""
    ABSORBED = "absorbed"
    """Folded into the preceding unit's output quantizer (Relu, Clip)."""


AxisRule = int | Callable[[Node], int]


@dataclass(frozen=True, slots=True)
class OpTraits:
    """Facts about an op type that passes and backends look up instead of hard-coding."""

    weights: dict[int, AxisRule] = field(default_factory=dict)
    """Weight input index -> channel axis (an int, negative from the end, or a rule of the node)."""
    bias: int | None = None
    """Index of the bias input, quantized to int32 as `scale_x * scale_w`."""
    quantizable: bool = False
    """Has integer kernels in at least one backend."""
    scale_transparent: bool = False
    """Output quantization equals input quantization (data movement only)."""
    shared_scales: bool = False
    """All quantized inputs and the output must share one scale and zero point."""


def _gemm_axis(node: Node) -> int:
    # Gemm computes A @ op(B); the output-channel axis of B is 0 when transB=1, else 1.
    return 0 if node.attr("transB", 0) else 1


def _conv_transpose_axis(node: Node) -> int:
    # ConvTranspose weights are [C_in, C_out/group, k...]: output channels are axis 1.
    return 1


_TRANSPARENT = (
    "Reshape", "Transpose", "MaxPool", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split", "Identity",
    "Expand", "Tile", "Resize", "SpaceToDepth", "DepthToSpace", "GlobalMaxPool", "ReduceMax", "ReduceMin",
    "Pad",
)  # fmt: skip

_TABLE: dict[str, OpTraits] = {
    "Conv": OpTraits(weights={1: 0}, bias=2, quantizable=True),
    "ConvTranspose": OpTraits(weights={1: _conv_transpose_axis}, bias=2, quantizable=True),
    "Gemm": OpTraits(weights={1: _gemm_axis}, bias=2, quantizable=True),
    "MatMul": OpTraits(weights={1: -1}, quantizable=True),
    "Gather": OpTraits(weights={0: 0}, quantizable=True, scale_transparent=True),
    "Concat": OpTraits(quantizable=True, shared_scales=True),
    **{op: OpTraits(quantizable=True) for op in (
        "Add", "Mul", "AveragePool", "GlobalAveragePool", "Relu", "Clip", "LeakyRelu", "Sigmoid", "Softmax",
        "Where", "ArgMax", "InstanceNormalization", "LayerNormalization", "Gelu",
    )},
    **{op: OpTraits(quantizable=True, scale_transparent=True) for op in _TRANSPARENT},
}  # fmt: skip

_EMPTY = OpTraits()


def traits_of(op_type: str, domain: str = "") -> OpTraits:
    """Traits of an op; ops outside the table (and other domains) have none."""
    if domain not in ("", "ai.onnx"):
        return _EMPTY
    return _TABLE.get(op_type, _EMPTY)


def weight_inputs(node: Node) -> dict[int, int]:
    """Weight input index -> resolved, non-negative channel axis, for inputs whose rank is known."""
    result: dict[int, int] = {}
    for idx, rule in traits_of(node.op_type, node.domain).weights.items():
        if idx >= len(node.inputs) or node.inputs[idx] is None:
            continue
        axis = rule(node) if callable(rule) else rule
        v = node.inputs[idx]
        rank = getattr(v.type, "rank", None) if v is not None else None
        if axis < 0:
            if rank is None:
                continue
            axis += rank
        result[idx] = axis
    return result


def channel_axis(node: Node, input_index: int) -> int | None:
    return weight_inputs(node).get(input_index)
