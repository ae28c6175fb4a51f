"""`calibrate`: run the float model in ONNX Runtime over the calibration data and feed the values to streaming
observers. Memory is bounded by the observers (histograms), never by stored activations. The ranges go to
`ctx.ranges`, keyed by value name.

`Calibrator` is the reusable part. The prepared model of the public API feeds it batch by batch, with statistics that
do not depend on any config: a min/max for every tensor any config could quantize, histograms (whose counts do not
depend on the method, scheme or integer range searched later) and per-channel ranges, so `convert` can derive the
range of any spec without running the model again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import onnxruntime  # type: ignore[import-untyped]  # noqa: F401  # calibration always runs ORT: load it with the compiler

from quantir.backends.onnx_proto.session import graph_session
from quantir.compiler.calibration.data import feeds
from quantir.compiler.calibration.hessian import HessianObserver
from quantir.compiler.calibration.observers import HISTOGRAM_METHODS, HistogramObserver, MinMaxObserver
from quantir.compiler.calibration.progress import Progress
from quantir.compiler.pass_manager import PassContext, PassResult, Range, register_pass
from quantir.ir import CalibrationError, Graph, QuantSpec, Scheme, TensorType, Value
from quantir.ir.clone import clone_graph

__all__ = [
    "FETCH_BUDGET_BYTES",
    "Calibrate",
    "Calibrator",
    "budget_batch",
    "calibrate_stream",
    "for_specs",
    "observed_values",
]


FETCH_BUDGET_BYTES = 256 << 20
"""Calibration exposes every observed tensor of a batch at once; a batch whose tensors would take more runs in slices
(a detector at 480x480 fetches about 130 MB per image: a batch of 32 took 4.5 GB)."""


def budget_batch(stats: dict[str, Any], default: int = 32) -> int | None:
    """A batch size for running the model again over its calibration data (verification) within
    `FETCH_BUDGET_BYTES`, from calibration's `stats()`; None where the model's batch is fixed or nothing was
    measured (the data's own batching applies)."""
    per_sample = int(stats.get("sample_bytes") or 0)
    if not stats.get("batch_splits") or per_sample <= 0:
        return None
    return max(1, min(default, FETCH_BUDGET_BYTES // per_sample))


def _rows_of(feed: dict[str, np.ndarray]) -> int | None:
    """The common leading size of every array of `feed`, or None."""
    sizes = {v.shape[0] if isinstance(v, np.ndarray) and v.ndim else None for v in feed.values()}
    return next(iter(sizes)) if len(sizes) == 1 else None


def observed_values(graph: Graph) -> list[Value]:
    """Non-constant values whose QuantSpec needs a calibrated range."""
    return [v for v in graph.values() if isinstance(v.quant, QuantSpec) and v.const is None]


class Calibrator:
    """An ORT session over the float graph that also returns every observed value, and their statistics.

    `observe`: values given a per-tensor min/max; `histograms`: values also given a histogram; `channels`:
    (value, axis) pairs given a per-channel min/max (axis -1 for SmoothQuant). A value whose data no observer can
    take (e.g. -inf fill values) is dropped with its error, raised only if a spec later needs its range; `required`
    names values whose errors are raised at once.
    """

    def __init__(
        self,
        graph: Graph,
        observe: Iterable[str],
        *,
        histograms: Iterable[str] = (),
        channels: Iterable[tuple[str, int]] = (),
        required: Iterable[str] = (),
        hessians: Iterable[str] = (),
    ) -> None:
        self.minmax = {name: MinMaxObserver(name=name) for name in observe}
        self.hessian_observers = {name: HessianObserver(name) for name in hessians}
        """GPTQ: Σ xᵀx of each named MatMul/Gemm input."""
        self.histograms = {name: HistogramObserver(name=name) for name in histograms}
        self.channels = {key: MinMaxObserver(key[1], name=key[0]) for key in channels}
        self.required = frozenset(required)
        self.failed: dict[str, CalibrationError] = {}
        """Values dropped from observation, with the error that dropped them."""
        self.output_observers = {
            v.name: MinMaxObserver(name=v.name)
            for v in graph.outputs
            if isinstance(v.type, TensorType) and v.type.dtype.is_float
        }
        """Float graph outputs' ranges: to state the step their activation quantizer would have (`output_steps`),
        the unit in which backends' outputs are compared."""
        self.samples = 0
        self.seconds = 0.0
        self.sample_bytes: int | None = None
        """The largest bytes of fetched tensors per sample seen so far (sizes the slices of a large batch)."""
        self.batch_splits = all(
            isinstance(v.type, TensorType) and v.type.shape is not None and len(v.type.shape) > 0
            and not isinstance(v.type.shape[0], int)
            for v in graph.inputs
        )  # fmt: skip
        """Every input has a symbolic leading (batch) axis, so a batch may run in slices of samples."""
        model_graph, vmap = clone_graph(graph)
        for v in model_graph.values():
            v.quant = None
        by_name = {v.name: v for v in graph.values()}
        names = list(dict.fromkeys([*self.minmax, *self.histograms, *(n for n, _ in self.channels),
                                    *self.hessian_observers]))  # fmt: skip
        self.output_names = [v.name for v in graph.outputs]
        model_graph.outputs = list(dict.fromkeys([*model_graph.outputs, *(vmap[by_name[n]] for n in names)]))
        # Basic optimizations only: extended fusions could swallow the exposed intermediate tensors.
        self.session = graph_session(model_graph, level="basic", prefix="quantir-calib-")
        self.fetch = list(dict.fromkeys([*self.output_names, *names]))

    def __getstate__(self) -> dict[str, Any]:
        """Statistics only: the ORT session stays behind (a copy in another process converts, never observes)."""
        return {k: v for k, v in self.__dict__.items() if k != "session"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.session = None

    def _feed(self, name: str, observers: dict[Any, Any], key: Any, data: np.ndarray) -> None:
        try:
            observers[key].update(data)
        except CalibrationError as e:
            if name in self.required:
                raise
            self.failed.setdefault(name, e)
            del observers[key]

    def observe(self, feed: dict[str, np.ndarray], *, outputs: bool = True) -> list[np.ndarray]:
        """Run one validated batch; update observers; return the model's own outputs (`outputs=False`: return
        nothing, and run a batch whose exposed tensors would pass `FETCH_BUDGET_BYTES` in slices of samples, which
        no statistic depends on)."""
        rows = _rows_of(feed) if self.batch_splits and not outputs else None
        if rows is None or rows <= 1:
            return self._observe(feed)
        start = 0
        if self.sample_bytes is None:  # measure one sample first
            self._observe({k: v[:1] for k, v in feed.items()})
            start = 1
        assert self.sample_bytes is not None
        step = max(1, FETCH_BUDGET_BYTES // max(1, self.sample_bytes))
        for i in range(start, rows, step):
            self._observe({k: v[i : i + step] for k, v in feed.items()})
        return []

    def _observe(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        t0 = time.perf_counter()
        try:
            results = self.session.run(self.fetch, feed)
        except Exception as e:
            raise CalibrationError(f"ONNX Runtime failed while calibrating: {e}") from e
        by_name = dict(zip(self.fetch, results, strict=True))
        for name in list(self.minmax):
            self._feed(name, self.minmax, name, by_name[name])
        for name in list(self.histograms):
            self._feed(name, self.histograms, name, by_name[name])
        for key in list(self.channels):
            self._feed(key[0], self.channels, key, by_name[key[0]])
        for name, hessian in self.hessian_observers.items():
            hessian.update(by_name[name])
        for name in list(self.output_observers):
            try:
                self.output_observers[name].update(by_name[name])
            except CalibrationError:  # e.g. -inf logits: the output simply gets no step
                del self.output_observers[name]
        first = next(iter(feed.values())) if feed else None
        count = int(first.shape[0]) if first is not None and first.ndim else 1
        self.samples += count
        per_sample = sum(int(r.nbytes) for r in results if isinstance(r, np.ndarray)) // max(1, count)
        self.sample_bytes = max(self.sample_bytes or 0, per_sample)
        self.seconds += time.perf_counter() - t0
        return [by_name[n] for n in self.output_names]

    def hessians(self) -> dict[str, np.ndarray]:
        """GPTQ's Hessian of every observed MatMul/Gemm input (after calibration)."""
        if self.samples == 0:
            raise CalibrationError("GPTQ/AWQ need calibration data (each layer's statistics come from its inputs): "
                                   "call the prepared model with data, or pass calib_data to quantize")
        return {name: h.hessian() for name, h in self.hessian_observers.items()}

    def channel_means(self) -> dict[str, np.ndarray]:
        """AWQ's mean |x| per channel of every observed MatMul/Gemm input (after calibration)."""
        return {name: h.mean_abs() for name, h in self.hessian_observers.items() if h.rows}

    def range_for(self, name: str, spec: QuantSpec, *, percentile: float = 99.999) -> Range:
        """The calibrated range of value `name` for `spec` (its observer, granularity, scheme and integer range)."""
        if self.samples == 0:
            raise CalibrationError("the model was never called with calibration data; call it (or pass data) first")
        if name in self.failed:
            raise self.failed[name]
        axis = spec.granularity.axis
        if spec.observer in HISTOGRAM_METHODS:
            hist = self.histograms.get(name)
            if hist is None:
                raise CalibrationError(
                    f"%{name} needs a {spec.observer!r} range, but calibration collected no histogram for it: pass a "
                    "config that uses a histogram algorithm (act_algo='kl', 'mse' or 'percentile') to prepare, then "
                    "convert with any config"
                )
            qmin = spec.qmin if spec.qmin is not None else 0
            qmax = spec.qmax if spec.qmax is not None else 255
            view = hist.searched(spec.observer, percentile=percentile, symmetric=spec.scheme is Scheme.SYM,
                                 qmin=qmin, qmax=qmax)  # fmt: skip
            return view.range()
        observer = self.minmax.get(name) if axis is None else self.channels.get((name, axis))
        if observer is None:
            where = "per tensor" if axis is None else f"per channel on axis {axis}"
            raise CalibrationError(
                f"%{name} needs a min/max range {where}, but calibration did not observe it so: pass the config to "
                "prepare, then convert"
            )
        return observer.range()

    def ranges_for(self, graph: Graph, *, percentile: float = 99.999) -> dict[str, Range]:
        """The range of every activation spec of an annotated `graph` (names as in the calibrated graph)."""
        return {v.name: self.range_for(v.name, v.quant, percentile=percentile)
                for v in observed_values(graph) if isinstance(v.quant, QuantSpec)}  # fmt: skip

    def channel_ranges(self, names: Iterable[str]) -> dict[str, Range]:
        """Per-channel (last axis) ranges of `names`, where observed."""
        return {n: self.channels[(n, -1)].range() for n in names if (n, -1) in self.channels}

    def output_ranges(self) -> dict[str, Range]:
        """Observed (min, max) of each float graph output (outputs with no finite range are left out)."""
        return {name: obs.range() for name, obs in self.output_observers.items() if obs.nbytes}

    def stats(self) -> dict[str, Any]:
        nbytes = sum(o.nbytes for o in self.minmax.values()) + sum(o.nbytes for o in self.histograms.values())
        nbytes += sum(o.nbytes for o in self.channels.values())
        return {"samples": self.samples, "seconds": self.seconds, "observer_bytes": nbytes,
                "sample_bytes": self.sample_bytes or 0, "batch_splits": self.batch_splits}  # fmt: skip


def for_specs(graph: Graph) -> dict[str, Any]:
    """Calibrator arguments observing exactly what the activation specs of an annotated `graph` need."""
    values = [v for v in observed_values(graph) if isinstance(v.quant, QuantSpec)]
    hist = [v.name for v in values if isinstance(v.quant, QuantSpec) and v.quant.observer in HISTOGRAM_METHODS]
    per_channel = [(v.name, v.quant.granularity.axis) for v in values
                   if isinstance(v.quant, QuantSpec) and v.quant.granularity.axis is not None]  # fmt: skip
    per_tensor = [v.name for v in values if v.name not in hist and all(v.name != n for n, _ in per_channel)]
    required = [v.name for v in values]
    return {"observe": per_tensor, "histograms": hist, "channels": per_channel, "required": required}


def calibrate_stream(calibrator: Calibrator, data: Any, graph: Graph, sampling_size: int, *, progress: bool = True,
                     batch_size: int | None = None,
                     on_feed: Callable[[dict[str, np.ndarray]], None] | None = None) -> None:  # fmt: skip
    """Feed `data` (any form `feeds` accepts; an .npz in batches of `batch_size`, see `feeds`) to `calibrator` until
    `sampling_size` samples, with a progress line when stderr is a terminal (`progress=False`: never); `on_feed`
    sees each validated batch first."""
    bar = Progress(sampling_size, enabled=None if progress else False)
    try:
        for feed in feeds(data, graph, sampling_size=sampling_size, batch_size=batch_size):
            before = calibrator.samples
            if on_feed is not None:
                on_feed(feed)
            calibrator.observe(feed, outputs=False)
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
        calibrator = Calibrator(graph, **for_specs(graph))
        calibrate_stream(calibrator, self.data, graph, self.sampling_size, progress=self.progress)
        ctx.ranges = calibrator.ranges_for(graph, percentile=self.percentile)
        ctx.calibration = calibrator.stats()
        return PassResult(True)
