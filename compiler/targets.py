"""What each target can run in low precision, in the shape the annotate pass reads.

The facts live in each backend's capability table; this module only adapts them, so annotate stays
target-independent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from quantir.backends.onnx_qdq.capabilities import CAPABILITIES
from quantir.backends.openvino import capabilities as ov_caps
from quantir.compiler.qparams import Convention
from quantir.ir import ConfigError
from quantir.ir.traits import UnitKind

__all__ = ["TargetCaps", "UnitKind", "target"]


@dataclass(frozen=True, slots=True)
class TargetCaps:
    name: str
    runtime: str
    """The runtime's name as users know it, for reasons ("ONNX Runtime")."""
    convention: Convention
    units: Mapping[str, UnitKind]
    float_reasons: Mapping[str, str] = field(default_factory=dict)
    """Why specific op types stay float on this target (shown in reports)."""
    weight_inputs_only: frozenset[str] = frozenset()
    """Compute ops quantized only when their weight is a constant (e.g. activation x activation MatMul is not)."""
    float_output_ok: frozenset[str] = frozenset()
    """Compute ops that still run as integer kernels without an output quantizer (MatMulIntegerToFloat)."""

    def float_reason(self, op_type: str) -> str:
        return self.float_reasons.get(op_type, f"{op_type} has no integer kernel in {self.runtime}")


def target(name: str) -> TargetCaps:
    """The capabilities of a backend by name (`onnx_qdq`, `openvino`)."""
    key = name.replace("-", "_")
    if key == "onnx_qdq":
        units = {op: cap.kind for op, cap in CAPABILITIES.items()}
        float_out = frozenset(op for op, cap in CAPABILITIES.items() if cap.float_output_kernel)
        return TargetCaps("onnx_qdq", "ONNX Runtime", Convention.ORT, units, float_output_ok=float_out)
    if key == "openvino":
        return TargetCaps("openvino", ov_caps.RUNTIME, Convention.OPENVINO, ov_caps.UNITS,
                          float_reasons={"MatMul": ov_caps.ACT_ACT_MATMUL},
                          weight_inputs_only=ov_caps.WEIGHT_INPUTS_ONLY,
                          float_output_ok=ov_caps.FLOAT_OUTPUT_OK)  # fmt: skip
    raise ConfigError(f"unknown backend {name!r}; expected one of onnx_qdq, openvino")
