"""`QuantizedModel`: the result of `convert`. It holds the quantized IR (target-neutral scales), legalizes a copy
for whichever backend it is saved to, runs in that backend's runtime when called, and reports every op's
decision with its reason.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantir.backends.contract import HEAVY_OPS, Backend, CapabilityTable, LegalizeReport, OpDecision, Runner
from quantir.backends.registry import get_backend
from quantir.compiler.calibration.data import validate_batch
from quantir.compiler.config.quant_config import FP8Config, StaticQuantConfig
from quantir.compiler.config.weight_only_config import RTNConfig
from quantir.compiler.decisions import aligned_rows, decisions_of, node_label
from quantir.compiler.pass_manager import PassContext, PassManager
from quantir.compiler.passes.legalize import Legalize
from quantir.ir import Graph
from quantir.ir.clone import clone_graph
from quantir.ir.traits import UnitKind

__all__ = ["Legalized", "QuantizedModel"]


@dataclass(slots=True)
class Legalized:
    backend: Backend
    graph: Graph
    report: LegalizeReport
    decisions: list[OpDecision]


def _merge(annotated: list[OpDecision], legal: list[OpDecision | None], caps: CapabilityTable) -> list[OpDecision]:
    """The annotate decision, overridden where legalization kept an op float, and (for ops the backend absorbs into
    the kernel before them, such as Relu/Clip) with the legalizer's more precise reason."""
    merged = []
    for a, row in zip(annotated, legal, strict=True):
        if row is None:
            merged.append(a)
        elif a.quantized and not row.quantized:
            merged.append(OpDecision(a.name, a.op_type, a.module, False, row.reason))
        elif (a.quantized and row.reason and row.reason not in a.reason
              and caps.kind(a.op_type) is UnitKind.ABSORBED):  # fmt: skip
            merged.append(OpDecision(a.name, a.op_type, a.module, True, row.reason))
        else:
            merged.append(a)
    return merged


class QuantizedModel:
    """Callable (runs the default backend's artifact), savable to any backend, and self-explaining."""

    def __init__(
        self, ir: Graph, backend: str, config: StaticQuantConfig | RTNConfig | FP8Config, ctx: PassContext
    ) -> None:
        self.ir = ir
        self.backend = get_backend(backend).name
        self.config = config
        self.ctx = ctx
        self._legal: dict[str, Legalized] = {}
        self._runner: Runner | None = None
        self._tmp: str | None = None
        self.tuning: Any = None
        """autotune's TuningResult (trials, goal, whether it was met) when this model came from autotune."""

    def legalized(self, backend: str | None = None) -> Legalized:
        target = get_backend(backend or self.backend)
        if target.name not in self._legal:
            graph = clone_graph(self.ir)[0]
            ctx = PassContext()
            PassManager([Legalize(backend=target.name)]).run(graph, ctx)
            assert ctx.legalize_report is not None
            report = ctx.legalize_report
            rows = aligned_rows(list(self.ir.nodes), report.nodes)
            # the rows of the nodes that have a decision, in the order `decisions_of` lists them
            legal = [r for n, r in zip(self.ir.nodes, rows, strict=True) if node_label(n) in self.ctx.decisions]
            decisions = _merge(decisions_of(self.ctx, self.ir), legal, target.capabilities)
            self._legal[target.name] = Legalized(target, graph, report, decisions)
        return self._legal[target.name]

    def decisions(self, backend: str | None = None) -> list[OpDecision]:
        return self.legalized(backend).decisions

    def manifest(self, backend: str | None = None) -> dict[str, Any]:
        legal = self.legalized(backend)
        return {
            "config": self.config.to_dict(),
            "calibration": self.ctx.calibration,
            "reduce_range": self.ctx.reduce_range,
            "recipes": self.ctx.recipes,
            "decisions": [d.to_json() for d in legal.decisions],
            "legalize": legal.report,
        }

    def save(self, path: str | os.PathLike[str], backend: str | None = None) -> Path:
        """Write the artifact for `backend` (default: the one prepared for) into the folder `path`, atomically."""
        legal = self.legalized(backend)
        return legal.backend.emit(legal.graph, path, manifest=self.manifest(legal.backend.name))

    def runner(self) -> Runner:
        """The artifact of the backend prepared for, saved to a temporary folder and loaded in its runtime."""
        if self._runner is None:
            self._tmp = tempfile.mkdtemp(prefix="quantir-model-")
            weakref.finalize(self, shutil.rmtree, self._tmp, True)
            artifact = self.save(Path(self._tmp) / "artifact")
            self._runner = get_backend(self.backend).load(artifact)
        return self._runner

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the artifact in its backend's runtime (ONNX Runtime, OpenVINO, ...) on one batch."""
        item: Any = kwargs if kwargs else (args[0] if len(args) == 1 else tuple(args))
        feed = validate_batch(item, self.ir)
        outputs: list[Any] = self.runner()(feed)
        sample = next(iter(item.values())) if isinstance(item, dict) else (item[0] if isinstance(item, tuple) else item)
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(sample, torch.Tensor):
            outputs = [torch.from_numpy(np.asarray(o)) for o in outputs]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def report(self, backend: str | None = None) -> str:
        """Every op with its decision and reason, and a summary."""
        rows = self.decisions(backend)
        table = [("op", "type", "module", "int8", "reason")]
        table += [(d.name, d.op_type, d.module or "", "yes" if d.quantized else "no", d.reason) for d in rows]
        widths = [max(len(r[i]) for r in table) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in table]
        heavy = [d for d in rows if d.op_type in HEAVY_OPS]
        lines.append("")
        lines.append(f"{sum(d.quantized for d in rows)}/{len(rows)} ops quantized; "
                     f"{sum(d.quantized for d in heavy)}/{len(heavy)} Conv/MatMul/Gemm")  # fmt: skip
        return "\n".join(lines)
