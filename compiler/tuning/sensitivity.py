"""Per-op sensitivity from one calibration (`layer_errors` on a few calibration batches): the quantization noise each
quantized op adds. The noise-to-signal ratio of the first quantized tensor at or after its output, less that of the
quantized tensors it reads from other quantized ops, is its own contribution, as an SQNR in dB (lower: more
sensitive), not the error accumulated upstream."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from quantir.compiler.layer_error import LayerReport, layer_errors
from quantir.ir import Graph, Node, QuantType, Value
from quantir.ir.quant_math import fake_quantize

__all__ = ["OpSensitivity", "rank_ops", "rank_weight_ops"]

_CAP_DB = 200.0
"""An exact tensor (infinite SQNR) counts as this many dB, so losses stay finite and comparable."""


@dataclass(frozen=True, slots=True)
class OpSensitivity:
    op: str
    op_type: str
    module: str | None
    sqnr_db: float
    """SQNR of the tensor that carries the op's result (capped at 200 dB)."""
    own_sqnr_db: float
    """The SQNR the op would have if its noise were the only one: 10·log10(1 / (NSR out - NSR in))."""

    def to_json(self) -> dict[str, object]:
        return {"op": self.op, "op_type": self.op_type, "module": self.module, "sqnr_db": self.sqnr_db,
                "own_sqnr_db": self.own_sqnr_db}  # fmt: skip


def _carrier(value: Value | None, measured: dict[str, float]) -> float | None:
    """The SQNR of `value`, or of the first measured tensor down its chain of single readers (a Conv's output is
    measured after the Relu the backend fuses into it)."""
    seen = 0
    while value is not None and value.name not in measured and seen < 8:
        users = value.users()
        if len(users) != 1 or not users[0].outputs:
            return None
        value, seen = users[0].outputs[0], seen + 1
    return None if value is None else measured.get(value.name)


def _nsr(sqnr_db: float) -> float:
    return float(10.0 ** (-sqnr_db / 10.0))


def _upstream_nsr(node: Node, measured: dict[str, float], quantized: set[str]) -> float:
    """The largest noise-to-signal ratio among the inputs whose error comes from upstream: those a quantized op
    produced. An input from the graph or a float op is quantized only because this op is: its noise is this op's."""
    known = [_nsr(measured[v.name]) for v in node.inputs
             if v is not None and v.const is None and v.name in measured
             and v.producer is not None and v.producer.name in quantized]  # fmt: skip
    return max(known, default=0.0)


def rank_ops(graph: Graph, candidates: Iterable[str], quantized: Iterable[str],
             batches: Iterable[dict[str, np.ndarray]]) -> list[OpSensitivity]:  # fmt: skip
    """The ops named in `candidates` in `graph` (a converted IR whose quantized ops are named in `quantized`), most
    sensitive first (lowest own SQNR; ties in graph order)."""
    report: LayerReport = layer_errors(graph, batches)
    measured = {r.value: min(r.sqnr_db, _CAP_DB) if not math.isnan(r.sqnr_db) else -_CAP_DB for r in report.rows}
    wanted, upstream = set(candidates), set(quantized)
    rows: list[tuple[float, float, int, OpSensitivity]] = []
    for position, node in enumerate(graph.nodes):
        if node.name not in wanted or not node.outputs:
            continue
        out = _carrier(node.outputs[0], measured)
        if out is None:
            continue
        added = _nsr(out) - _upstream_nsr(node, measured, upstream)
        own = min(_CAP_DB, -10.0 * math.log10(added)) if added > 0 else _CAP_DB
        module = node.source.module if node.source is not None else None
        rows.append((own, 0.0, position, OpSensitivity(node.name, node.op_type, module, out, own)))
    return [r[3] for r in sorted(rows, key=lambda r: r[:3])]


def _weight_sqnr(original: np.ndarray, quantized: np.ndarray) -> float:
    signal = float(np.sum(original.astype(np.float64) ** 2))
    noise = float(np.sum((quantized.astype(np.float64) - original.astype(np.float64)) ** 2))
    return _CAP_DB if noise == 0 else (min(_CAP_DB, 10 * math.log10(signal / noise)) if signal > 0 else -_CAP_DB)


def rank_weight_ops(graph: Graph, float_graph: Graph, candidates: Iterable[str]) -> list[OpSensitivity]:
    """Weight-only quantization: the ops named in `candidates`, most sensitive first, by the SQNR of their
    quantized weights against the float weights of `float_graph` (same names; GPTQ/AWQ rewrite the IR's copy)."""
    wanted = set(candidates)
    floats = {name: v.const.numpy() for name, v in float_graph.constants.items() if v.const is not None}
    rows: list[tuple[float, int, OpSensitivity]] = []
    for position, node in enumerate(graph.nodes):
        if node.name not in wanted:
            continue
        levels = [_weight_sqnr(floats.get(v.name, v.const.numpy()), fake_quantize(v.const.numpy(), v.quant))
                  for v in node.inputs
                  if v is not None and v.const is not None and isinstance(v.quant, QuantType)]  # fmt: skip
        if levels:
            own = min(levels)
            module = node.source.module if node.source is not None else None
            rows.append((own, position, OpSensitivity(node.name, node.op_type, module, own, own)))
    return [r[2] for r in sorted(rows, key=lambda r: r[:2])]
