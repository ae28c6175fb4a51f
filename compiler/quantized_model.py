"""`QuantizedModel`: the result of `convert`. It holds the quantized IR (target-neutral scales), legalizes a copy
for whichever backend it is saved to, runs in that backend's runtime when called, and reports every op's
decision with its reason.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantir.backends import onnx_qdq, openvino
from quantir.backends.onnx_proto import ort_session
from quantir.compiler.calib_data import validate_batch
from quantir.compiler.config import StaticQuantConfig
from quantir.compiler.decisions import OpDecision, decisions_of
from quantir.compiler.pass_manager import PassContext
from quantir.ir import ConfigError, Graph
from quantir.ir.clone import clone_graph

__all__ = ["Legalized", "QuantizedModel"]

_LEGALIZE: dict[str, Callable[[Graph], Any]] = {
    "onnx_qdq": onnx_qdq.legalize_for_onnx_qdq,
    "openvino": openvino.legalize_for_openvino,
}
"""Per backend: the pass that keeps only what its runtime runs in low precision (mutates a clone, returns a report
whose `nodes` rows follow the graph's nodes)."""


def _emit_openvino(*args: Any, **kwargs: Any) -> Path:
    """OpenVINO's emitter, imported on first use (the `openvino` package is slow to import)."""
    from quantir.backends.openvino.emit import emit

    path: Path = emit(*args, **kwargs)
    return path


_EMIT: dict[str, Callable[..., Path]] = {"onnx_qdq": onnx_qdq.emit, "openvino": _emit_openvino}
"""Per backend: `emit(graph, path, *, manifest)`, which writes the artifact folder atomically."""
BACKENDS = tuple(_LEGALIZE)


@dataclass(slots=True)
class Legalized:
    backend: str
    graph: Graph
    report: Any
    decisions: list[OpDecision]


def _backend_key(name: str) -> str:
    key = name.replace("-", "_")
    if key not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return key


def _merge(annotated: list[OpDecision], legal: list[Any]) -> list[OpDecision]:
    """The annotate decision, overridden where legalization kept an op float."""
    merged = []
    for a, row in zip(annotated, legal, strict=True):
        if a.quantized and not row.quantized:
            merged.append(OpDecision(a.name, a.op_type, a.module, False, row.reason))
        elif a.quantized and row.reason and row.reason not in a.reason and a.op_type in ("Relu", "Clip"):
            merged.append(OpDecision(a.name, a.op_type, a.module, True, row.reason))
        else:
            merged.append(a)
    return merged


class QuantizedModel:
    """Callable (runs the default backend's artifact), savable to any backend, and self-explaining."""

    def __init__(self, ir: Graph, backend: str, config: StaticQuantConfig, ctx: PassContext) -> None:
        self.ir = ir
        self.backend = _backend_key(backend)
        self.config = config
        self.ctx = ctx
        self._legal: dict[str, Legalized] = {}
        self._session: Any = None
        self._tmp: str | None = None

    def legalized(self, backend: str | None = None) -> Legalized:
        key = _backend_key(backend or self.backend)
        if key not in self._legal:
            graph = clone_graph(self.ir)[0]
            report = _LEGALIZE[key](graph)
            decisions = _merge(decisions_of(self.ctx.data, self.ir), report.nodes)
            self._legal[key] = Legalized(key, graph, report, decisions)
        return self._legal[key]

    def decisions(self, backend: str | None = None) -> list[OpDecision]:
        return self.legalized(backend).decisions

    def manifest(self, backend: str | None = None) -> dict[str, Any]:
        legal = self.legalized(backend)
        return {
            "config": self.config.to_dict(),
            "calibration": self.ctx.data.get("calibration", {}),
            "reduce_range": bool(self.ctx.data.get("reduce_range", False)),
            "decisions": [d.to_json() for d in legal.decisions],
            "legalize": legal.report,
        }

    def save(self, path: str | os.PathLike[str], backend: str | None = None) -> Path:
        """Write the artifact for `backend` (default: the one prepared for) into the folder `path`, atomically."""
        legal = self.legalized(backend)
        return _EMIT[legal.backend](legal.graph, path, manifest=self.manifest(legal.backend))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._session is None:
            self._tmp = tempfile.mkdtemp(prefix="quantir-model-")
            weakref.finalize(self, shutil.rmtree, self._tmp, True)
            artifact = self.save(Path(self._tmp) / "artifact")
            self._session = ort_session(artifact / "model.onnx")
        item: Any = kwargs if kwargs else (args[0] if len(args) == 1 else tuple(args))
        feed = validate_batch(item, self.ir)
        outputs = self._session.run(None, feed)
        sample = next(iter(item.values())) if isinstance(item, dict) else (item[0] if isinstance(item, tuple) else item)
        if hasattr(sample, "detach"):
            import torch

            outputs = [torch.from_numpy(np.asarray(o)) for o in outputs]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def report(self, backend: str | None = None) -> str:
        """Every op with its decision and reason, and a summary."""
        rows = self.decisions(backend)
        table = [("op", "type", "module", "int8", "reason")]
        table += [(d.name, d.op_type, d.module or "", "yes" if d.quantized else "no", d.reason) for d in rows]
        widths = [max(len(r[i]) for r in table) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in table]
        heavy = [d for d in rows if d.op_type in ("Conv", "MatMul", "Gemm", "ConvTranspose")]
        lines.append("")
        lines.append(f"{sum(d.quantized for d in rows)}/{len(rows)} ops quantized; "
                     f"{sum(d.quantized for d in heavy)}/{len(heavy)} Conv/MatMul/Gemm")  # fmt: skip
        return "\n".join(lines)
