"""`dce`: remove nodes whose outputs nothing reads and constants no node uses.

Nodes of other domains are kept unless `remove_custom_domains` is set, since they may have side effects
the IR cannot see.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from quantir.compiler.pass_manager import PassContext, PassResult, register_pass
from quantir.ir import Graph

__all__ = ["EliminateDeadCode"]


@register_pass
@dataclass(frozen=True, slots=True)
class EliminateDeadCode:
    name: ClassVar[str] = "dce"

    remove_custom_domains: bool = False
    """Also remove unused nodes of non-ONNX domains."""

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        changed = False
        for node in reversed(graph.nodes):
            if node.domain not in ("", "ai.onnx") and not self.remove_custom_domains:
                continue
            outputs = [v for v in node.outputs if v is not None]
            if any(v.has_uses() or graph.is_output(v) for v in outputs):
                continue
            graph.erase(node)
            changed = True
        for value in list(graph.constants.values()):
            if not value.has_uses() and not graph.is_output(value):
                graph.remove_constant(value)
                changed = True
        return PassResult(changed)
