"""`legalize{backend=...}`: hand the quantized IR to a backend's legalizer (from the registry), which keeps quantized
only what its runtime runs in low precision and says why for everything else. Postcondition, checked after the
pass: the graph is legal, i.e. legalizing it again removes and changes nothing, and no uncalibrated spec is left."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from quantir.backends.registry import DEFAULT_BACKEND, get_backend
from quantir.compiler.pass_manager import PassContext, PassResult, register_pass
from quantir.ir import Graph, QuantSpec
from quantir.ir.clone import clone_graph

__all__ = ["Legalize"]


@register_pass
@dataclass(frozen=True, slots=True)
class Legalize:
    name: ClassVar[str] = "legalize"

    backend: str = DEFAULT_BACKEND

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        report = get_backend(self.backend).legalize(graph)
        ctx.legalize_report = report
        return PassResult(not report.unchanged or report.opset_after != report.opset_before)

    def postcondition(self, graph: Graph, ctx: PassContext) -> list[str]:
        """Problems that make `graph` not legal for the backend (empty: legal)."""
        problems = [f"%{v.name} still has an uncalibrated QuantSpec" for v in graph.values()
                    if isinstance(v.quant, QuantSpec) and not v.quant.dynamic]  # fmt: skip
        again = get_backend(self.backend).legalize(clone_graph(graph)[0])
        problems += [f"a second legalization removes %{d.value}: {d.reason}" for d in again.removed]
        problems += [f"a second legalization changes %{d.value}: {d.reason}" for d in again.changed]
        return problems
