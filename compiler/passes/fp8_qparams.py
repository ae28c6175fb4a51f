"""`fp8-qparams`: turn the measured maxabs of every FP8 module into INC's scales (`compiler/qparams/fp8_methods`):
the input scale from the calibrated range of the module's input (per tensor), the weight scale from the weight
(per tensor or per output channel), each by the module's scale recipe (the scale method, or INC's dict form looked
up by node, layer index, type, then default) for the config's device. A module whose node appears more than once
(a module called twice) takes the max over its calls, as INC's maxabs observer does.

The raw measurements go to `ctx.calibration["fp8_measurements"]` (module path -> inputs / outputs / params maxabs),
the data of INC's measurement JSON that the gaudi_fp8 backend writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from quantir.compiler.config.quant_config import FP8Config
from quantir.compiler.pass_manager import PassContext, PassResult, register_pass
from quantir.compiler.passes.fp8_annotate import Fp8Unit, fp8_candidates, unit_recipe
from quantir.compiler.qparams.fp8_methods import activation_scale, weight_scale
from quantir.ir import DType, Graph, PassError, QuantSpec, QuantType
from quantir.ir.quant_math import round_float

__all__ = ["Fp8QParams"]


HP_DTYPES = {"bf16": DType.BF16, "fp16": DType.F16, "fp32": DType.F32}


def _in_hp(q: QuantType, hp: DType) -> QuantType:
    """`q` with its scale rounded to hp_dtype, the type the checkpoint stores scales in (the powers of two of the
    hardware-aligned and pow2 methods are exact; arbitrary scales round), so IR, checkpoint and Gaudi agree."""
    return replace(q, scale=round_float(q.scale, hp))


def _maxabs(rng: tuple[np.ndarray, np.ndarray]) -> float:
    lo, hi = rng
    return float(max(np.max(np.abs(lo)), np.max(np.abs(hi))))


def _annotated(unit: Fp8Unit) -> bool:
    x = unit.node.inputs[0]
    return x is not None and isinstance(x.quant, (QuantSpec, QuantType)) and x.quant.dtype.is_float


@register_pass
@dataclass(frozen=True, slots=True)
class Fp8QParams:
    name: ClassVar[str] = "fp8-qparams"

    config: FP8Config = field(default_factory=FP8Config)
    output_ranges: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    """Calibrated ranges of module outputs, for the measurement file when `measure_exclude` is NONE."""

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        cfg = self.config
        units = [c for c in fp8_candidates(graph) if isinstance(c, Fp8Unit) and _annotated(c)]
        amax: dict[str, float] = {}
        for u in units:
            x = u.node.inputs[0]
            assert x is not None
            if x.name not in ctx.ranges:
                raise PassError(f"no calibrated range for %{x.name}, the input of {u.module!r}; calibrate before "
                                "fp8-qparams")  # fmt: skip
            amax[u.module] = max(amax.get(u.module, 0.0), _maxabs(ctx.ranges[x.name]))
        measurements: dict[str, dict[str, Any]] = {}
        hp = HP_DTYPES[cfg.hp_dtype]
        owner: dict[str, tuple[str, QuantType]] = {}
        for u in units:
            x, w = u.node.inputs[0], u.node.inputs[1]
            assert x is not None and w is not None and w.const is not None
            recipe = unit_recipe(cfg, u)
            qx = _in_hp(activation_scale(recipe, amax[u.module], cfg.dtype, cfg.device), hp)  # type: ignore[arg-type]
            if x.name in owner and not np.array_equal(owner[x.name][1].scale, qx.scale):
                raise PassError(f"%{x.name} is the input of {owner[x.name][0]!r} and {u.module!r}, whose scale recipes "
                                "give it different scales; one tensor has one FP8 type in the IR: give both modules "
                                "the same scale_method entry")  # fmt: skip
            owner.setdefault(x.name, (u.module, qx))
            x.quant = qx
            weight = np.asarray(w.const.numpy(), dtype=np.float32)
            w.quant = _in_hp(weight_scale(recipe, weight, u.out_axis, cfg.dtype, cfg.device), hp)  # type: ignore[arg-type]
            entry: dict[str, Any] = {"inputs": [amax[u.module]]}
            if cfg.measure_exclude != "PARAMS":
                entry["params"] = {"weight": float(np.max(np.abs(weight), initial=0.0))}
            y = u.node.outputs[0]
            if cfg.measure_exclude == "NONE" and y is not None and y.name in self.output_ranges:
                entry["outputs"] = [_maxabs(self.output_ranges[y.name])]
            measurements[u.module] = entry
        ctx.calibration["fp8_measurements"] = measurements
        return PassResult(bool(units))
