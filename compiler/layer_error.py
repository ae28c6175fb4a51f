"""Per-layer quantization error: where a quantized model departs from its float self.

Every quantized activation of the IR, and every graph output, is compared with the same tensor of the float model
on the same inputs. The
quantized side is the IR's fake-quant semantics (its QDQ lowering run by ONNX Runtime with no graph optimization),
so each tensor carries the error of its own quantizer plus everything accumulated upstream; the first tensor in
graph order whose SQNR falls well below its neighbours' is where accuracy is lost.

The float side is, by default, the same IR with every quant type removed. For a model quantized in this process
(`quantize()`), whose constants still hold the float weights, that is the float model. A model read from a QDQ
file holds its weights only as dequantized integers, so that default measures activation quantization alone (the
report says so); and a quantizer that deleted ops (ONNX Runtime's tool drops a Relu into the asymmetric Q before
it) leaves a graph whose Q/DQ-free form is not the float model at all. For the end-to-end figure pass the float
model (`float_graph`, CLI `--float`): tensors are matched by name. Any quantized model works: quantir's artifacts,
and QDQ files from ONNX Runtime's tool, NNCF or PyTorch PT2E (raised into quant types on import).

Every element counts: feed sequence models unpadded batches (or batches padded to their longest), or the positions
an attention mask discards dominate the sums.

Statistics stream over the batches (three sums per tensor, no activations kept):
- SQNR (dB): 10·log10(Σ float² / Σ (quant - float)²), infinite when they are equal;
- relative L2: sqrt(Σ (quant - float)² / Σ float²);
- max |quant - float| in the tensor's quantization steps (its smallest scale when per channel; none for a float
  graph output, whose row gives the end-to-end figure).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from quantir.backends.onnx_proto.qdq import lower_to_qdq
from quantir.backends.onnx_proto.session import graph_session
from quantir.ir import Graph, QuantirError, QuantType, Value
from quantir.ir.clone import clone_graph
from quantir.ir.quant_math import fake_quantize

__all__ = ["LayerReport", "LayerRow", "layer_errors"]


@dataclass(frozen=True, slots=True)
class LayerRow:
    """One quantized activation: its error against the float model."""

    value: str
    producer: str
    """The node that computes it (`describe()`: op, name, source module), or "graph input"."""
    position: int
    """Index of the producer in graph order (graph inputs: -1), so rows can be read front to back."""
    step: float | None
    """The tensor's quantization step; None for a float graph output."""
    sqnr_db: float
    rel_l2: float
    max_abs: float
    """max |quant - float|, in the tensor's own units."""

    @property
    def max_abs_lsb(self) -> float | None:
        return None if self.step is None else self.max_abs / self.step


@dataclass(slots=True)
class LayerReport:
    samples: int
    reference: str
    """What the float side is: "the model with its Q/DQ removed" or "the given float model"."""
    rows: list[LayerRow] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    """Quantized tensors with no same-named tensor in the given float model."""

    def worst(self, n: int) -> list[LayerRow]:
        """The `n` rows with the lowest SQNR."""
        return sorted(self.rows, key=lambda r: r.sqnr_db)[:n]

    def format(self, top: int | None = None) -> str:
        """A table in graph order (or the `top` worst, worst first)."""
        rows = self.worst(top) if top else sorted(self.rows, key=lambda r: r.position)
        what = f"the {len(rows)} worst of {len(self.rows)}" if top else f"all {len(self.rows)}"
        lines = [f"per-layer error on {self.samples} samples ({what} compared tensors)",
                 f"float side: {self.reference}",
                 "| value | produced by | SQNR dB | rel L2 | max err (steps) |", "|---|---|---|---|---|"]  # fmt: skip
        for r in rows:
            sqnr = "inf" if math.isinf(r.sqnr_db) else f"{r.sqnr_db:.1f}"
            err = f"{r.max_abs:.4g} (float output)" if r.max_abs_lsb is None else f"{r.max_abs_lsb:.2f}"
            lines.append(f"| {r.value} | {r.producer} | {sqnr} | {r.rel_l2:.4f} | {err} |")
        if self.unmatched:
            lines.append(f"not in the float model (no same-named tensor): {', '.join(self.unmatched)}")
        return "\n".join(lines)


class _Sums:
    __slots__ = ("diff", "max_abs", "signal")

    def __init__(self) -> None:
        self.signal = self.diff = self.max_abs = 0.0

    def update(self, f: np.ndarray, q: np.ndarray) -> None:
        f64, d = f.astype(np.float64), q.astype(np.float64) - f.astype(np.float64)
        self.signal += float(np.sum(f64 * f64))
        self.diff += float(np.sum(d * d))
        self.max_abs = max(self.max_abs, float(np.max(np.abs(d), initial=0.0)))


def _activations(graph: Graph) -> list[Value]:
    return [v for v in graph.values() if v.const is None and isinstance(v.quant, QuantType)]


def _dequantized(lowered: Graph, names: set[str]) -> dict[str, Value]:
    """IR value name -> the DequantizeLinear output that carries its quantized version in the QDQ lowering."""
    found: dict[str, Value] = {}
    for q in lowered.nodes:
        src, qout = (q.inputs[0], q.outputs[0]) if q.op_type == "QuantizeLinear" and q.inputs else (None, None)
        if src is None or qout is None:
            continue
        for dq in qout.users():
            out = dq.outputs[0] if dq.op_type == "DequantizeLinear" and dq.outputs else None
            if out is None:
                continue
            # a quantized graph output keeps its name on the DQ output; otherwise the Q reads the value itself
            name = out.name if out.name in names else src.name
            if name in names:
                found.setdefault(name, out)
    return found


def _weights_on_grid(graph: Graph) -> bool:
    """Whether every quantized constant already holds values on its quantization grid (read from a QDQ file)."""
    pairs = [(v.const.numpy(), v.quant) for v in graph.constants.values()
             if isinstance(v.quant, QuantType) and v.const is not None]  # fmt: skip
    return bool(pairs) and all(np.array_equal(fake_quantize(w, q), w) for w, q in pairs)


def _float_side(graph: Graph, float_graph: Graph | None, wanted: list[Value]) -> tuple[Graph, dict[str, str], str]:
    """(the float graph with the wanted tensors as outputs, IR name -> its name there, what it is)."""
    if float_graph is None:
        ref, vmap = clone_graph(graph)
        for v in ref.values():
            v.quant = None
        found = {v.name: vmap[v] for v in wanted}
        what = "the model with its Q/DQ removed"
        if _weights_on_grid(graph):
            what += " (its weights are already quantized values: activation error only; --float for end to end)"
    else:
        ours, theirs = [v.name for v in graph.inputs], [v.name for v in float_graph.inputs]
        if sorted(ours) != sorted(theirs):
            raise QuantirError(f"the float model's inputs {theirs} are not the quantized model's {ours}: pass the "
                               "float model this one was quantized from")  # fmt: skip
        ref, _ = clone_graph(float_graph)
        by_name = {v.name: v for v in ref.values() if v.const is None}
        found = {v.name: by_name[v.name] for v in wanted if v.name in by_name}
        what = "the given float model"
    ref.outputs = list(dict.fromkeys([*ref.outputs, *found.values()]))
    return ref, {k: v.name for k, v in found.items()}, what


def _run(session: Any, fetch: list[str], feed: dict[str, np.ndarray], what: str, index: int) -> list[Any]:
    try:
        return list(session.run(fetch, feed))
    except Exception as e:  # ORT's own exception types (InvalidArgument, Fail, ...)
        shapes = {k: tuple(v.shape) for k, v in feed.items()}
        raise QuantirError(f"ONNX Runtime cannot run {what} on batch {index} (inputs {shapes}): {e}") from e


def layer_errors(
    graph: Graph, batches: Iterable[dict[str, np.ndarray]], *, float_graph: Graph | None = None
) -> LayerReport:
    """Compare every quantized activation and graph output of `graph` (an IR with calibrated quant types) with the
    float model on `batches` (validated feed dicts); `float_graph` is that float model when stripping Q/DQ does not
    give it back (see the module docstring). Raises QuantirError when nothing is quantized or no batch is given."""
    acts = _activations(graph)
    if not acts:
        raise QuantirError("the model has no quantized activation: nothing to compare (is it a float model? quantize "
                           "it first with `quantir convert MODEL --calib DATA -o DIR`, then compare DIR)")  # fmt: skip
    names = {v.name for v in acts}
    lowered = lower_to_qdq(graph, guard_float_weights=False)
    dq = _dequantized(lowered, names)
    float_outputs = [v for v in graph.outputs if v.name not in names]  # the same names in the lowering
    wanted = [v for v in acts if v.name in dq] + float_outputs
    reference, float_names, what = _float_side(graph, float_graph, wanted)
    compared = [v for v in wanted if v.name in float_names]
    lowered.outputs = list(dict.fromkeys([*lowered.outputs, *(dq[v.name] for v in compared if v.name in dq)]))
    float_session = graph_session(reference, level="basic", prefix="quantir-layers-")
    quant_session = graph_session(lowered, level="none", prefix="quantir-layers-")
    float_fetch = [float_names[v.name] for v in compared]
    quant_fetch = [dq[v.name].name if v.name in dq else v.name for v in compared]
    sums = {v.name: _Sums() for v in compared}
    samples = 0
    for index, feed in enumerate(batches):
        f_out = _run(float_session, float_fetch, feed, f"the float side ({what})", index)
        q_out = _run(quant_session, quant_fetch, feed, "the quantized model", index)
        for v, f, q in zip(compared, f_out, q_out, strict=True):
            sums[v.name].update(np.asarray(f), np.asarray(q))
        first = next(iter(feed.values()), None)
        samples += int(first.shape[0]) if first is not None and first.ndim else 1
    if samples == 0:
        raise QuantirError("no input batch was given: nothing to compare")
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    report = LayerReport(samples, what, unmatched=[v.name for v in wanted if v.name not in float_names])
    for v in compared:
        s, q = sums[v.name], v.quant
        step = float(np.min(q.scale)) if isinstance(q, QuantType) else None
        sqnr = math.inf if s.diff == 0 else (10 * math.log10(s.signal / s.diff) if s.signal > 0 else -math.inf)
        rel = math.sqrt(s.diff / s.signal) if s.signal > 0 else (0.0 if s.diff == 0 else math.inf)
        p = v.producer
        report.rows.append(LayerRow(v.name, p.describe() if p is not None else "graph input",
                                    order.get(id(p), -1), step, sqnr, rel, s.max_abs))  # fmt: skip
    return report


def rows_as_json(report: LayerReport) -> list[dict[str, Any]]:
    """The rows as JSON-ready dicts (infinite SQNR as None)."""
    return [{"value": r.value, "producer": r.producer, "position": r.position, "step": r.step,
             "sqnr_db": None if math.isinf(r.sqnr_db) else r.sqnr_db, "rel_l2": r.rel_l2, "max_abs": r.max_abs,
             "max_abs_lsb": r.max_abs_lsb} for r in sorted(report.rows, key=lambda r: r.position)]  # fmt: skip
