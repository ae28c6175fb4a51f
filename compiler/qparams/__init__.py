"""All scale and zero-point math: ranges -> quantization parameters per convention (`scales`), and the float
output steps recorded for cross-runtime comparison (`output_steps`). Backends never compute scales themselves."""

from __future__ import annotations

from quantir.compiler.qparams.scales import (
    Convention,
    bias_qparams,
    compute_qparams,
    quant_range,
    unify_ranges,
)

__all__ = ["Convention", "bias_qparams", "compute_qparams", "quant_range", "unify_ranges"]
