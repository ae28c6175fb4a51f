"""Per-op quantization decisions with reasons: what the report, the manifest and `quantir convert` show.

Every op that stays float has a reason (user rule, unsupported by the target, not fast on this ISA...).
"""

from __future__ import annotations

from dataclasses import dataclass

from quantir.ir import Graph, Node

__all__ = ["DECISIONS_KEY", "OpDecision", "decisions_of", "record"]

DECISIONS_KEY = "decisions"


@dataclass(frozen=True, slots=True)
class OpDecision:
    name: str
    op_type: str
    module: str | None
    quantized: bool
    reason: str

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "op_type": self.op_type, "module": self.module, "quantized": self.quantized,
                "reason": self.reason}  # fmt: skip


def node_label(node: Node) -> str:
    if node.name:
        return node.name
    out = node.outputs[0] if node.outputs else None
    return f"<{node.op_type} -> %{out.name}>" if out is not None else f"<{node.op_type}>"


def record(data: dict[str, object], node: Node, quantized: bool, reason: str) -> None:
    """Set (or overwrite, e.g. when legalization dequantizes an op) the decision for `node`."""
    table = data.setdefault(DECISIONS_KEY, {})
    assert isinstance(table, dict)
    module = node.source.module if node.source is not None else None
    table[node] = OpDecision(node_label(node), node.op_type, module, quantized, reason)


def decisions_of(data: dict[str, object], graph: Graph) -> list[OpDecision]:
    """Decisions in graph order (nodes without a decision are omitted)."""
    table = data.get(DECISIONS_KEY, {})
    assert isinstance(table, dict)
    return [table[n] for n in graph.nodes if n in table]
