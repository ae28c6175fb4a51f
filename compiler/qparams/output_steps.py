"""The quantization step a float graph output would have: the unit in which runtimes' outputs are compared.

quantir leaves an output float when only float code reads it (logits of a quantized Gemm, say), so it has no scale
of its own. Comparing two runtimes on it still needs a unit: this module states the step the output's own activation
quantizer (the dtype, scheme and integer range of the producing op's quantized activation input, per tensor,
minmax) would give it from the range observed on the calibration data, with the target's scale convention.
"""

from __future__ import annotations

import numpy as np

from quantir.compiler.qparams.scales import Convention, compute_qparams
from quantir.ir import Granularity, Graph, QuantSpec, QuantType

__all__ = ["float_output_steps"]


def float_output_steps(
    graph: Graph, ranges: dict[str, tuple[np.ndarray, np.ndarray]], convention: Convention
) -> dict[str, dict[str, object]]:
    """Output name -> {"step", "range", "quantizer"} for each float output with a calibrated range whose producer
    reads a quantized activation; other outputs are left out."""
    steps: dict[str, dict[str, object]] = {}
    for out in graph.outputs:
        node = out.producer
        if out.name not in ranges or node is None:
            continue
        acts = [v.quant for v in node.inputs if v is not None and v.const is None and isinstance(v.quant, QuantType)]
        if not acts:
            continue
        q = acts[0]
        spec = QuantSpec(q.dtype, q.scheme, Granularity.per_tensor(), "minmax", q.qmin, q.qmax)
        lo, hi = ranges[out.name]
        step = compute_qparams(lo, hi, spec, convention=convention).scale
        steps[out.name] = {
            "step": float(step),
            "range": [float(lo), float(hi)],
            "quantizer": f"{q.dtype} {q.scheme.value} [{q.qmin}, {q.qmax}] per tensor, as {node.name}'s input",
        }
    return steps
