"""`fp8-annotate`: INC's Gaudi FP8 module selection on the IR. Every Conv/Gemm/MatMul with a constant weight is a
module INC patches when its source module type is one INC patches on CPU-loadable checkpoints (`Linear`, `Conv2d`;
ONNX-sourced nodes count as `Linear` for Gemm/MatMul and `Conv2d` for a 2-D Conv), and `FP8Config`'s allowlist and
blocklist select among them with INC's rule (`should_quantize`): types by exact class name, names by `re.search`,
an allowlist with both lists empty allows every patched type, and the blocklist wins.

A selected module gets an FP8 `QuantSpec` (observer `maxabs`) on its activation input and its weight: per tensor,
or per output channel where the scale method quantizes weights per channel. Its output and bias stay in hp_dtype
(the FP8 GEMM dequantizes by s_x * s_w). Every node gets a decision with its reason; an allowlist or blocklist name
that matches no module is a `ConfigWarning` listing the nearest module paths.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from quantir.compiler.config.quant_config import ConfigWarning, FP8Config, nearest
from quantir.compiler.decisions import record
from quantir.compiler.pass_manager import PassContext, PassResult, register_pass
from quantir.compiler.qparams.fp8_methods import ScaleRecipe, scale_recipe
from quantir.ir import Granularity, Graph, Node, QuantSpec, Scheme, TensorType, weight_inputs

__all__ = ["FP8_OBSERVER", "Fp8Annotate", "Fp8Unit", "fp8_candidates", "layer_index", "unit_recipe"]

FP8_OBSERVER = "maxabs"
PATCHED_TYPES = frozenset({"Linear", "Conv2d"})
"""Module types INC's FP8 patches that a CPU-converted checkpoint can hold (its other patched types, such as
Matmul, KVCache or FusedSDPA, are Gaudi-specific modules that stock models do not contain)."""

_ONNX_TYPES = {"Gemm": "Linear", "MatMul": "Linear", "Conv": "Conv2d"}


@dataclass(frozen=True, slots=True)
class Fp8Unit:
    """One Conv/Gemm/MatMul that INC would see as a module: its path, class name and weight output axis."""

    node: Node
    module: str
    module_type: str
    out_axis: int


def _module(node: Node) -> tuple[str, str]:
    source = node.source
    name = source.module if source is not None and source.module else node.name
    kind = source.module_type.rsplit(".", 1)[-1] if source is not None and source.module_type else ""
    return name, kind or _ONNX_TYPES[node.op_type]


def _unit(node: Node) -> Fp8Unit | str:
    """The node as an INC module, or why it is none."""
    x = node.inputs[0] if node.inputs else None
    w = node.inputs[1] if len(node.inputs) > 1 else None
    if x is None or w is None or w.const is None or x.const is not None:
        return f"{node.op_type} has no constant weight: INC's FP8 patches Linear and Conv2d modules only"
    if not (isinstance(x.type, TensorType) and x.type.dtype.is_float and w.const.dtype.is_float):
        return f"{node.op_type} does not compute in float"
    rank = len(w.const.shape)
    if node.op_type == "Conv" and rank != 4:
        return f"a Conv of {rank - 2}-d kernels is not a Conv2d; INC's FP8 patches Linear and Conv2d modules only"
    if node.op_type in ("MatMul", "Gemm") and rank != 2:
        return f"{node.op_type} by a {rank}-d weight is not a Linear; INC's FP8 patches Linear and Conv2d only"
    if node.op_type == "Gemm" and node.attr("transA", 0):
        return "Gemm with transA=1 is not a Linear"
    module, kind = _module(node)
    if kind not in PATCHED_TYPES:
        return f"module {module!r} is a {kind}, not a type INC's FP8 patches ({', '.join(sorted(PATCHED_TYPES))})"
    axis = weight_inputs(node).get(1)
    if axis is None:
        return f"weight %{w.name} has no known output-channel axis"
    return Fp8Unit(node, module, kind, axis)


def fp8_candidates(graph: Graph) -> list[Fp8Unit | tuple[Node, str]]:
    """Per node of `graph`, in order: its `Fp8Unit`, or (node, why it is not a patched module)."""
    out: list[Fp8Unit | tuple[Node, str]] = []
    for node in graph.nodes:
        if node.op_type not in _ONNX_TYPES or node.domain not in ("", "ai.onnx"):
            out.append(
                (node, f"{node.op_type} is not a module INC's FP8 patches (Linear, Conv2d); it runs in hp_dtype")
            )
            continue
        unit = _unit(node)
        out.append(unit if isinstance(unit, Fp8Unit) else (node, unit))
    return out


def layer_index(module: str) -> int | None:
    """The layer number of a module path (the first all-digit component: `model.layers.3.mlp` -> 3), as INC's
    dict-form `layers` keys use it."""
    for part in module.split("."):
        if part.isdigit():
            return int(part)
    return None


def unit_recipe(cfg: FP8Config, unit: Fp8Unit) -> ScaleRecipe:
    """The scale recipe of one module: the config's method, or its dict form looked up for this module."""
    return scale_recipe(cfg.scale_method, node=unit.module, layer=layer_index(unit.module), layer_type=unit.module_type)


def _selected(cfg: FP8Config, unit: Fp8Unit) -> str | None:
    """None when INC's rule quantizes the module, else why not."""
    block, allow = cfg.blocklist, cfg.allowlist
    if unit.module_type in block.get("types", []):
        return f"blocklist types has {unit.module_type}"
    hit = next((p for p in block.get("names", []) if re.search(p, unit.module)), None)
    if hit is not None:
        return f"blocklist name {hit!r} matches {unit.module!r}"
    names, types = allow.get("names", []), allow.get("types", [])
    if not names and not types:
        return None
    if unit.module_type in types or any(re.search(p, unit.module) for p in names):
        return None
    return f"not in the allowlist (names {names}, types {types})"


def _warn_unmatched(cfg: FP8Config, modules: Sequence[str]) -> None:
    for which in ("allowlist", "blocklist"):
        for pattern in getattr(cfg, which).get("names", []):
            if not any(re.search(pattern, m) for m in modules):
                close = nearest(pattern, modules, n=5, cutoff=0.3) or list(modules[:5])
                warnings.warn(f"FP8Config.{which} name {pattern!r} matches no quantizable module; nearest: "
                              f"{', '.join(close) or '(none)'}", ConfigWarning, stacklevel=4)  # fmt: skip


@register_pass
@dataclass(frozen=True, slots=True)
class Fp8Annotate:
    name: ClassVar[str] = "fp8-annotate"

    config: FP8Config = field(default_factory=FP8Config)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        cfg = self.config
        candidates = fp8_candidates(graph)
        _warn_unmatched(cfg, [c.module for c in candidates if isinstance(c, Fp8Unit)])
        changed = False
        for c in candidates:
            if not isinstance(c, Fp8Unit):
                record(ctx, c[0], False, c[1])
                continue
            why = _selected(cfg, c)
            if why is not None:
                record(ctx, c.node, False, f"FP8Config: {why}")
                continue
            recipe = unit_recipe(cfg, c)
            x, w = c.node.inputs[0], c.node.inputs[1]
            assert x is not None and w is not None
            wg = Granularity.per_channel(c.out_axis) if recipe.weight.per_channel else Granularity.per_tensor()
            if x.quant is None:
                x.quant = QuantSpec(cfg.dtype, Scheme.SYM, Granularity.per_tensor(), FP8_OBSERVER)
            w.quant = QuantSpec(cfg.dtype, Scheme.SYM, wg, FP8_OBSERVER)
            granularity = "per channel" if recipe.weight.per_channel else "per tensor"
            record(ctx, c.node, True, f"{c.module_type} {c.module!r}: {cfg.fp8_config} input and weight "
                                      f"({granularity}), scale_method {recipe.method}")  # fmt: skip
            changed = True
        return PassResult(changed)
