"""Recipes the default config turns on from what the IR contains, each with the reason recorded in the report.

SmoothQuant: `smooth_quant=None` (the default) applies it where the graph has transformer-style blocks, whose
activation outliers (after LayerNorm and GELU, in attention outputs) per-tensor int8 cannot hold. On the real
all-MiniLM-L6-v2 (held-out sentences, ONNX Runtime) alpha=0.95 reached embedding cos 0.9969 against 0.9888 without,
and 0.5 (INC's default) less; 0.95 is also NNCF's transformer-preset alpha for MatMul. A CNN's classifier Gemm alone
is no transformer block, so CNNs keep the plain recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantir.compiler.config.quant_config import StaticQuantConfig
from quantir.ir import Graph, Node, Value

__all__ = ["AUTO_SMOOTH_ALPHA", "INC_SMOOTH_ALPHA", "SmoothPlan", "smooth_quant_plan", "transformer_blocks"]

AUTO_SMOOTH_ALPHA = 0.95
INC_SMOOTH_ALPHA = 0.5
_THROUGH = frozenset({"Add", "Div", "Mul", "Reshape", "Transpose", "Where", "Cast", "Dropout", "Identity", "Squeeze",
                      "Unsqueeze"})  # fmt: skip


@dataclass(frozen=True, slots=True)
class SmoothPlan:
    enabled: bool
    alpha: float
    reason: str
    """Why it is on or off, for the report."""


def _activation_matmul(v: Value | None, depth: int = 0) -> bool:
    """`v` comes from a MatMul of two activations, possibly through scaling, masking and reshaping."""
    p = v.producer if v is not None else None
    if p is None or depth > 6:
        return False
    if p.op_type == "MatMul":
        return all(x is not None and x.const is None for x in p.inputs[:2])
    return p.op_type in _THROUGH and any(_activation_matmul(x, depth + 1) for x in p.inputs if x is not None)


def _decomposed_layernorm(node: Node) -> bool:
    """Sub(x, ReduceMean(x)): the centring step of a LayerNorm exported op by op."""
    if node.op_type != "Sub" or len(node.inputs) != 2 or node.inputs[1] is None:
        return False
    mean = node.inputs[1].producer
    return mean is not None and mean.op_type == "ReduceMean" and mean.inputs[:1] == node.inputs[:1]


def transformer_blocks(graph: Graph) -> str | None:
    """What in `graph` marks transformer-style blocks (for the report), or None."""
    layernorm = sum(n.op_type in ("LayerNormalization", "SimplifiedLayerNormalization") or _decomposed_layernorm(n)
                    for n in graph.nodes)  # fmt: skip
    attention = sum(n.op_type == "Softmax" and _activation_matmul(n.inputs[0]) for n in graph.nodes)
    gelu = sum(n.op_type in ("Gelu", "FastGelu", "Erf") for n in graph.nodes)
    found = [f"{count} {what}" for count, what in ((layernorm, "LayerNorm"), (attention, "attention Softmax"),
                                                   (gelu, "GELU")) if count]  # fmt: skip
    return ", ".join(found) if found else None


def smooth_quant_plan(config: StaticQuantConfig, graph: Graph) -> SmoothPlan:
    """Whether SmoothQuant runs for `config` on `graph`, with which alpha, and why."""
    if config.smooth_quant is False:
        return SmoothPlan(False, INC_SMOOTH_ALPHA, "smooth_quant=False")
    if config.smooth_quant:
        alpha = INC_SMOOTH_ALPHA if config.smooth_quant_alpha is None else config.smooth_quant_alpha
        return SmoothPlan(True, alpha, "smooth_quant=True")
    evidence = transformer_blocks(graph)
    if evidence is None:
        return SmoothPlan(False, INC_SMOOTH_ALPHA, "smooth_quant=None: no transformer-style block")
    alpha = AUTO_SMOOTH_ALPHA if config.smooth_quant_alpha is None else config.smooth_quant_alpha
    return SmoothPlan(True, alpha, f"smooth_quant=None and transformer-style blocks ({evidence})")
