"""Per-op quantization decisions with reasons: what the report, the manifest and `quantir convert` show.

Every op that stays float has a reason (user rule, unsupported by the target, not fast on this ISA...). Decisions are
kept in the typed `PassContext.decisions`, keyed by node name, so they survive cloning the graph. The record type is
the backends' one `OpDecision` (`quantir.backends.contract`).
"""

from __future__ import annotations

from quantir.backends.contract import OpDecision
from quantir.compiler.pass_manager import PassContext
from quantir.ir import Graph, Node

__all__ = ["OpDecision", "aligned_rows", "decisions_of", "node_label", "record"]


def node_label(node: Node) -> str:
    if node.name:
        return node.name
    out = node.outputs[0] if node.outputs else None
    return f"<{node.op_type} -> %{out.name}>" if out is not None else f"<{node.op_type}>"


def record(ctx: PassContext, node: Node, quantized: bool, reason: str) -> None:
    """Set (or overwrite, e.g. when legalization dequantizes an op) the decision for `node`."""
    module = node.source.module if node.source is not None else None
    label = node_label(node)
    ctx.decisions[label] = OpDecision(label, node.op_type, module, quantized, reason)


def decisions_of(ctx: PassContext, graph: Graph) -> list[OpDecision]:
    """Decisions in graph order (nodes without a decision are omitted)."""
    table = ctx.decisions
    return [d for n in graph.nodes if (d := table.get(node_label(n))) is not None]


def aligned_rows(nodes: list[Node], rows: list[OpDecision]) -> list[OpDecision | None]:
    """A legalize report's rows for `nodes` of the graph it was given (a copy of it): by position when
    legalization kept the node list, else by name (legalization may rewrite nodes, e.g. an opset upgrade); None for a
    node with no row of its name."""
    if len(rows) == len(nodes):
        return list(rows)
    by_name = {r.name: r for r in rows}
    return [by_name.get(node_label(n)) for n in nodes]
