"""`calibrate`: run the float model in ONNX Runtime over the calibration data and feed every value that
carries an activation `QuantSpec` to a streaming observer. Memory is bounded by the observers (histograms),
never by stored activations. The ranges go to `ctx.data["ranges"]` keyed by value name.

`Calibrator` is the reusable part: the prepared model of the public API feeds it batch by batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import onnxruntime  # type: ignore[import-untyped]  # noqa: F401  # calibration always runs ORT: load it with the compiler

from quantir.backends.onnx_proto.session import graph_session
from quantir.compiler.calib_data import feeds
from quantir.compiler.observers import MinMaxObserver, Observer, make_observer
from quantir.compiler.pass_manager import PassContext, PassResult, register_pass
from quantir.compiler.progress import Progress
from quantir.ir import CalibrationError, Graph, QuantSpec, Scheme, TensorType, Value
from quantir.ir.clone import clone_graph

__all__ = ["RANGES_KEY", "Calibrate", "Calibrator", "observed_values"]

RANGES_KEY = "ranges"


def observed_values(graph: Graph) -> list[Value]:
    """Non-constant values whose QuantSpec needs a calibrated range."""
    return [v for v in graph.values() if isinstance(v.quant, QuantSpec) and v.const is None]


def _observer(v: Value, percentile: float) -> Observer:
    spec = v.quant
    assert isinstance(spec, QuantSpec)
    qmin = spec.qmin if spec.qmin is not None else 0
    qmax = spec.qmax if spec.qmax is not None else 255
    return make_observer(spec.observer, axis=spec.granularity.axis, symmetric=spec.scheme is Scheme.SYM,
                         qmin=qmin, qmax=qmax, percentile=percentile, name=v.name)  # fmt: skip


class Calibrator:
    """An ORT session over the float graph that also returns every observed value, and their observers."""

    def __init__(self, graph: Graph, *, percentile: float = 99.999, per_channel: Iterable[str] = ()) -> None:
        """`per_channel` names values also observed per channel along their last axis (for SmoothQuant)."""
        values = observed_values(graph)
        self.observers = {v.name: _observer(v, percentile) for v in values}
        self.channel_observers = {name: MinMaxObserver(-1, name=name) for name in per_channel}
        by_name = {v.name: v for v in graph.values()}
        values += [by_name[n] for n in self.channel_observers if n not in self.observers]
        self.output_observers = {
            v.name: MinMaxObserver(name=v.name)
            for v in graph.outputs
            if v.quant is None and isinstance(v.type, TensorType) and v.type.dtype.is_float
        }
        """Float graph outputs' ranges: not to quantize them, but to state the step their activation quantizer would
        have (`output_steps`), the unit in which backends' outputs are compared."""
        self.samples = 0
        self.seconds = 0.0
        model_graph, vmap = clone_graph(graph)
        for v in model_graph.values():
            v.quant = None
        self.output_names = [v.name for v in graph.outputs]
        model_graph.outputs = list(dict.fromkeys([*model_graph.outputs, *(vmap[v] for v in values)]))
        # Basic optimizations only: extended fusions could swallow the exposed intermediate tensors.
        self.session = graph_session(model_graph, level="basic", prefix="quantir-calib-")
        self.fetch = list(dict.fromkeys([*self.output_names, *self.observers, *self.channel_observers]))

    def observe(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run one validated batch; update observers; return the model's own outputs."""
        t0 = time.perf_counter()
        try:
            results = self.session.run(self.fetch, feed)
        except Exception as e:
            raise CalibrationError(f"ONNX Runtime failed while calibrating: {e}") from e
        by_name = dict(zip(self.fetch, results, strict=True))
        for name, obs in self.observers.items():
            obs.update(by_name[name])
        for name, chan in self.channel_observers.items():
            chan.update(by_name[name])
        for name in list(self.output_observers):
            try:
                self.output_observers[name].update(by_name[name])
            except CalibrationError:  # e.g. -inf logits: the output simply gets no step
                del self.output_observers[name]
        first = next(iter(feed.values())) if feed else None
        self.samples += int(first.shape[0]) if first is not None and first.ndim else 1
        self.seconds += time.perf_counter() - t0
        return [by_name[n] for n in self.output_names]

    def ranges(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if self.samples == 0:
            raise CalibrationError("the model was never called with calibration data; call it (or pass data) first")
        return {name: obs.range() for name, obs in self.observers.items()}

    def channel_ranges(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {name: obs.range() for name, obs in self.channel_observers.items()}

    def output_ranges(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Observed (min, max) of each float graph output (outputs with no finite range are left out)."""
        return {name: obs.range() for name, obs in self.output_observers.items() if obs.nbytes}

    def stats(self) -> dict[str, float]:
        return {"samples": self.samples, "seconds": self.seconds,
                "observer_bytes": sum(o.nbytes for o in self.observers.values())}  # fmt: skip


def calibrate_stream(calibrator: Calibrator, data: Any, graph: Graph, sampling_size: int,
                     *, progress: bool = True) -> None:  # fmt: skip
    """Feed `data` (any form `feeds` accepts) to `calibrator` until `sampling_size` samples, with a progress line
    when stderr is a terminal (`progress=False`: never)."""
    bar = Progress(sampling_size, enabled=None if progress else False)
    try:
        for feed in feeds(data, graph, sampling_size=sampling_size):
            before = calibrator.samples
            calibrator.observe(feed)
            bar.update(calibrator.samples - before)
    finally:
        bar.close()


@register_pass
@dataclass(frozen=True, slots=True)
class Calibrate:
    name: ClassVar[str] = "calibrate"

    data: Any = None
    """Calibration data: iterable of dicts/tuples/arrays, a torch DataLoader, or an .npz path."""
    sampling_size: int = 100
    percentile: float = 99.999
    progress: bool = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if not observed_values(graph):
            ctx.notes.append("calibrate: no activation is quantized; nothing to observe")
            return PassResult(False)
        calibrator = Calibrator(graph, percentile=self.percentile)
        calibrate_stream(calibrator, self.data, graph, self.sampling_size, progress=self.progress)
        ctx.data[RANGES_KEY] = calibrator.ranges()
        ctx.data["calibration"] = calibrator.stats()
        return PassResult(True)
