"""`weight-only-rtn`: round-to-nearest weight-only quantization (INC's `RTNConfig`). Each MatMul/Gemm with a
constant 2-D weight gets a calibrated weight-only `QuantType` on that weight (groups along the input channels,
`compiler.qparams.weight_only`); activations stay float, so no calibration data is needed.

The config resolves per op with INC's rules (set_local by type or name regex, 2.x dicts, fp32 locals for LM heads);
every heavy op gets a decision with its reason. `use_mse_search` picks, per weight, the clip ratio in 1, 0.995, ...,
0.805 (INC's grid: 40 steps of 1/200) that minimizes the weight's quantization MSE.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from quantir.backends.registry import DEFAULT_BACKEND, get_backend
from quantir.compiler.config.resolve import FieldResolution, op_ref, resolve_fields
from quantir.compiler.config.weight_only_config import WEIGHT_ONLY_DTYPES_BUILT, RTNConfig, weight_bits
from quantir.compiler.decisions import record
from quantir.compiler.pass_manager import PassContext, PassResult, register_pass
from quantir.compiler.qparams.weight_only import rtn_qtype
from quantir.ir import ConfigError, Graph, Node, QuantType, Value, weight_inputs
from quantir.ir.quant_math import fake_quantize

__all__ = ["WeightOnlyRTN", "constant_weight", "weight_only_ops"]

_HEAVY = ("MatMul", "Gemm", "Conv", "ConvTranspose")

WeightMath = Callable[[Node, FieldResolution, np.ndarray, int], QuantType]
_CLIP_RATIOS = 1.0 - np.arange(40) / 200.0


def constant_weight(node: Node) -> tuple[Value, int] | None:
    """The constant 2-D weight of a MatMul/Gemm and its input-channel (reduction) axis."""
    axes = weight_inputs(node)
    if node.op_type not in ("MatMul", "Gemm") or 1 not in axes:
        return None
    w = node.inputs[1]
    if w is None or w.const is None or len(w.const.shape) != 2 or not w.const.dtype.is_float:
        return None
    return w, 1 - axes[1]


def weight_only_ops(graph: Graph) -> list[Node]:
    """The heavy ops of `graph` (Conv/MatMul/Gemm), whose decisions weight-only quantization reports."""
    return [n for n in graph.nodes if n.op_type in _HEAVY]


def _clip_search(w: np.ndarray, make: Any) -> QuantType:
    """The weight's qtype at the clip ratio with the least quantization MSE (ties keep the larger ratio)."""
    best, best_err = make(1.0), np.inf
    for ratio in _CLIP_RATIOS:
        q = make(float(ratio))
        err = float(np.mean((fake_quantize(w, q) - w) ** 2))
        if err < best_err:
            best, best_err = q, err
    return best


@register_pass
@dataclass(frozen=True, slots=True)
class WeightOnlyRTN:
    name: ClassVar[str] = "weight-only-rtn"
    config: RTNConfig
    backend: str = DEFAULT_BACKEND
    weight_math: WeightMath | None = None
    """Another algorithm's weight math (GPTQ), given the op, its resolved fields, the [K, N] weight and the group
    axis; it returns the weight-only type and may replace the constant. None: round to nearest."""
    algorithm: str = "RTN"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        backend = get_backend(self.backend)
        caps = backend.weight_only
        if caps is None:
            raise ConfigError(f"RTNConfig: {backend.name} ({backend.runtime}) runs no weight-only kernels")
        if self.config.tunable:
            raise ConfigError("RTNConfig has list-valued fields (a tuning space): quantize one of "
                              "config.expand(), or pass it to autotune")  # fmt: skip
        if self.config.use_double_quant:
            raise ConfigError("RTNConfig.use_double_quant=True: double quantization of the scales is not implemented")
        nodes = weight_only_ops(graph)
        refs = [op_ref(n, i) for i, n in enumerate(nodes)]
        changed = False
        for node, res in zip(nodes, resolve_fields(self.config, refs), strict=True):
            if res.values["dtype"] != "fp32" and constant_weight(node) is not None:
                problem = caps.bits_problem(weight_bits(res.values), backend.name)
                if problem is not None:
                    raise ConfigError(f"op {node.name!r}: RTNConfig: {problem}")
            quantized, reason = self._apply(node, res, caps.ops, caps.kernel)
            changed |= quantized
            record(ctx, node, quantized, reason)
        ctx.recipes.append(f"weight-only {self.algorithm} for {backend.name} ({caps.kernel})")
        return PassResult(changed)

    def _apply(self, node: Node, res: FieldResolution, ops: frozenset[str], kernel: str) -> tuple[bool, str]:
        values = dict(res.values)
        dtype = values["dtype"]
        if dtype == "fp32":
            return False, res.reason("fp32 (fallback)")
        if dtype not in WEIGHT_ONLY_DTYPES_BUILT:
            built = ", ".join(WEIGHT_ONLY_DTYPES_BUILT[:-1])
            raise ConfigError(f"op {node.name!r}: RTNConfig dtype={dtype!r} is not implemented; quantir's weight-only "
                              f"formats are {built} (and fp32 to keep an op float)")  # fmt: skip
        found = constant_weight(node)
        if found is None:
            if node.op_type.startswith("Conv"):
                return False, "weight-only quantization covers MatMul/Gemm (Linear) weights, not Conv weights"
            return (
                False,
                f"this {node.op_type} has no constant 2-D weight (activation x activation): nothing to compress",
            )
        if node.op_type not in ops:
            return False, f"{node.op_type} has no weight-only kernel here ({kernel} reads MatMul weights)"
        w, k_axis = found
        data = np.asarray(w.const.numpy() if w.const is not None else (), dtype=np.float32)
        axis = k_axis if values["group_dim"] == 1 else 1 - k_axis
        bits, sym, full = weight_bits(values), bool(values["use_sym"]), bool(values["use_full_range"])

        group = values["group_size"]
        assert isinstance(group, int)

        def make(ratio: float) -> QuantType:
            return rtn_qtype(data * np.float32(ratio), axis=axis, group_size=group, bits=bits, sym=sym,
                             full_range=full)  # fmt: skip

        if self.weight_math is not None:
            q = self.weight_math(node, res, data, axis)
        else:
            q = _clip_search(data, make) if values["use_mse_search"] else make(1.0)
        w.quant = q
        size = q.granularity.group_size
        grouping = f"group {size}" if size != data.shape[axis] else "per output channel"
        shape = f"{'sym' if sym else 'asym'}{' full range' if full else ''} {grouping}"
        return True, res.reason(f"weight-only int{bits} {shape} ({self.algorithm}), activations float: {kernel}")
