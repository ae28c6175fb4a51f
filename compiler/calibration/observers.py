"""Streaming calibration observers (ARCHITECTURE.md §4, step 3): fed one batch at a time, in bounded memory.

`MinMaxObserver` keeps running minima and maxima, per tensor or per channel; `HistogramObserver` keeps a bounded
histogram (compiler/histogram.py) and searches it for a percentile, KL or MSE range. `make_observer` builds either.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Literal, Protocol, TypeAlias, runtime_checkable

import numpy as np
import numpy.typing as npt

from quantir.compiler.calibration.histogram import GridHistogram, kl_threshold, mse_asymmetric, mse_threshold, quantile
from quantir.ir.errors import CalibrationError, ConfigError

__all__ = [
    "ALGORITHMS",
    "HISTOGRAM_METHODS",
    "HistogramMethod",
    "HistogramObserver",
    "MinMaxObserver",
    "Observer",
    "make_observer",
]

HistogramMethod: TypeAlias = Literal["percentile", "kl", "mse"]
HISTOGRAM_METHODS: tuple[HistogramMethod, ...] = ("percentile", "kl", "mse")
ALGORITHMS: tuple[str, ...] = ("minmax", *HISTOGRAM_METHODS)
_MIN_BINS = 16


@runtime_checkable
class Observer(Protocol):
    """What the calibrate pass needs: feed batches, then read a float32 range of shape () or (C,)."""

    @property
    def name(self) -> str: ...

    @property
    def num_batches(self) -> int: ...

    @property
    def nbytes(self) -> int:
        """Bytes of statistics held; constant once the first batch has been seen."""
        ...

    def update(self, x: npt.ArrayLike) -> None: ...

    def range(self) -> tuple[np.ndarray, np.ndarray]: ...


# ---- input checks ---------------------------------------------------------------------------------------------------


def _where(name: str) -> str:
    return f"tensor {name!r}" if name else "an unnamed tensor"


def _as_real(x: npt.ArrayLike, name: str) -> np.ndarray:
    """The batch as a real-valued array, without a copy for float and integer data."""
    arr = np.asarray(x)
    if arr.dtype.kind in "fiu":
        return arr
    if arr.dtype.kind == "V":  # ml_dtypes (bfloat16, float8) are void-kind but cast to float32
        try:
            return arr.astype(np.float32)
        except (TypeError, ValueError):
            pass
    raise CalibrationError(f"{_where(name)}: cannot observe {arr.dtype} data; expected float (or integer) values")


def _nonfinite_error(arr: np.ndarray, name: str, batch: int) -> CalibrationError:
    nan = int(np.count_nonzero(np.isnan(arr))) if arr.dtype.kind == "f" else 0
    inf = int(np.count_nonzero(np.isinf(arr))) if arr.dtype.kind == "f" else 0
    where = f"{_where(name)}, batch {batch}"
    if nan + inf == 0:
        return CalibrationError(f"{where}: {arr.dtype} values overflow float32; scale the tensor or keep it in float")
    return CalibrationError(
        f"{where}: {nan + inf} non-finite values ({nan} NaN, {inf} Inf) among {arr.size}; a range needs finite "
        "data: check the calibration inputs, or keep this tensor in float"
    )


# ---- min / max ------------------------------------------------------------------------------------------------------


class MinMaxObserver:
    """Running min and max over all batches: global (axis None) or per channel along `axis` (other axes reduced).

    NaN is skipped, as ONNX Runtime's np.nanmin does (`nan_count` says how many); Inf raises CalibrationError, since
    no finite scale could cover it. Memory: two float32 arrays of shape () or (C,).
    """

    __slots__ = ("_batches", "_hi", "_lo", "axis", "name", "nan_count")

    def __init__(self, axis: int | None = None, *, name: str = "") -> None:
        self.axis = axis
        self.name = name
        self.nan_count = 0
        self._batches = 0
        self._lo: np.ndarray | None = None
        self._hi: np.ndarray | None = None

    @property
    def num_batches(self) -> int:
        return self._batches

    @property
    def nbytes(self) -> int:
        return 0 if self._lo is None or self._hi is None else self._lo.nbytes + self._hi.nbytes

    def update(self, x: npt.ArrayLike) -> None:
        arr = _as_real(x, self.name)
        self._batches += 1
        if arr.size == 0:
            return
        lo, hi = self._reduce(arr)
        if self._lo is None or self._hi is None:
            self._lo, self._hi = lo, hi
            return
        if lo.shape != self._lo.shape:
            raise CalibrationError(
                f"{_where(self.name)}, batch {self._batches}: {lo.size} channels on axis {self.axis} "
                f"(shape {arr.shape}), but earlier batches had {self._lo.size}"
            )
        np.fmin(self._lo, lo, out=self._lo)  # fmin/fmax: a channel that was all NaN so far takes the new value
        np.fmax(self._hi, hi, out=self._hi)

    def _reduced_axes(self, arr: np.ndarray) -> tuple[int, ...] | None:
        if self.axis is None:
            return None
        if not -arr.ndim <= self.axis < arr.ndim:
            raise CalibrationError(
                f"{_where(self.name)}, batch {self._batches}: channel axis {self.axis} is out of range for shape "
                f"{arr.shape}"
            )
        axis = self.axis % arr.ndim
        return tuple(i for i in range(arr.ndim) if i != axis)

    def _reduce(self, arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        axes = self._reduced_axes(arr)
        lo, hi = np.min(arr, axis=axes), np.max(arr, axis=axes)  # NaN propagates, so this checks finiteness too
        if arr.dtype.kind == "f" and not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            if np.isinf(arr).any():
                raise _nonfinite_error(arr, self.name, self._batches)
            self.nan_count += int(np.count_nonzero(np.isnan(arr)))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN channels stay NaN until range()
                lo, hi = np.nanmin(arr, axis=axes), np.nanmax(arr, axis=axes)
        with np.errstate(over="ignore"):
            lo32, hi32 = np.asarray(lo, dtype=np.float32), np.asarray(hi, dtype=np.float32)
        if np.isinf(lo32).any() or np.isinf(hi32).any():
            raise _nonfinite_error(arr, self.name, self._batches)
        return lo32, hi32

    def range(self) -> tuple[np.ndarray, np.ndarray]:
        """(rmin, rmax), float32, shape () per tensor or (C,) per channel."""
        if self._lo is None or self._hi is None:
            raise CalibrationError(f"{_where(self.name)}: no data observed ({self._batches} batches, all empty)")
        if np.isnan(self._lo).any():
            channels = np.flatnonzero(np.isnan(self._lo.reshape(-1)))[:8].tolist()
            raise CalibrationError(
                f"{_where(self.name)}: only NaN observed (channels {channels} on axis {self.axis}, "
                f"{self.nan_count} NaN values in all); check the calibration inputs, or keep this tensor in float"
            )
        return self._lo.copy(), self._hi.copy()


# ---- histogram ------------------------------------------------------------------------------------------------------


class HistogramObserver:
    """A bounded histogram of one tensor, searched for a percentile, KL (entropy) or MSE range.

    The histogram holds 2·bins counts on a power-of-two grid that widens as data arrives (GridHistogram), so the
    observed range always spans at least about `bins` bins; the exact min and max are kept too and bound every
    result. qmin/qmax are the integer range the tensor will be quantized to: KL merges into that many levels
    (half of them when symmetric), MSE estimates the rounding error of that step. Per tensor only.
    """

    __slots__ = ("_batches", "_hist", "method", "name", "percentile", "qmax", "qmin", "symmetric")

    def __init__(
        self,
        bins: int = 2048,
        method: HistogramMethod = "percentile",
        *,
        percentile: float = 99.999,
        symmetric: bool = False,
        qmin: int = 0,
        qmax: int = 255,
        axis: int | None = None,
        name: str = "",
    ) -> None:
        _check_histogram_config(method, bins, percentile, qmin, qmax, axis, name)
        self.method: HistogramMethod = method
        self.percentile = float(percentile)
        self.symmetric = symmetric
        self.qmin, self.qmax = qmin, qmax
        self.name = name
        self._batches = 0
        self._hist = GridHistogram(2 * bins)

    @property
    def num_batches(self) -> int:
        return self._batches

    @property
    def nbytes(self) -> int:
        return int(self._hist.counts.nbytes)

    def update(self, x: npt.ArrayLike) -> None:
        arr = _as_real(x, self.name)
        self._batches += 1
        if arr.size == 0:
            return
        with np.errstate(over="ignore"):
            values = arr.astype(np.float32, copy=False)  # no copy for float32; half the size for float64
        lo, hi = float(values.min()), float(values.max())  # NaN propagates, so this checks finiteness too
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise _nonfinite_error(arr, self.name, self._batches)
        self._hist.add(values, lo, hi)

    def histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """(counts, edges) over the observed [min, max], for reports and tests."""
        if self._hist.total == 0:
            return np.zeros(0), np.zeros(1)
        counts, edges = self._hist.signed()
        return counts.copy(), edges

    def searched(
        self, method: HistogramMethod, *, percentile: float, symmetric: bool, qmin: int, qmax: int
    ) -> HistogramObserver:
        """This histogram searched with other settings: the counts do not depend on them, so one histogram serves
        every method, scheme and integer range (the view shares the counts; feed the original, not the view)."""
        _check_histogram_config(method, _MIN_BINS, percentile, qmin, qmax, None, self.name)
        view = HistogramObserver.__new__(HistogramObserver)
        view.method, view.percentile, view.symmetric = method, float(percentile), symmetric
        view.qmin, view.qmax, view.name = qmin, qmax, self.name
        view._batches, view._hist = self._batches, self._hist
        return view

    def range(self) -> tuple[np.ndarray, np.ndarray]:
        """(rmin, rmax) as float32 scalars, inside the observed [min, max]."""
        h = self._hist
        if h.total == 0:
            raise CalibrationError(f"{_where(self.name)}: no data observed ({self._batches} batches, all empty)")
        lo, hi = (h.lo, h.hi) if h.lo == h.hi else _SEARCHES[self.method](self)
        return np.asarray(max(lo, h.lo), dtype=np.float32), np.asarray(min(hi, h.hi), dtype=np.float32)

    def _symmetric(self, t: float) -> tuple[float, float]:
        """(-t, t) clamped to the observed range; t never drops below the smallest |x| of one-signed data."""
        lo, hi = self._hist.lo, self._hist.hi
        t = max(t, lo, -hi)
        return max(-t, lo), min(t, hi)

    def _percentile_range(self) -> tuple[float, float]:
        """ONNX Runtime's rule: symmetric cuts the |x| CDF at p; asymmetric cuts (100 - p)/2 percent off each tail."""
        if self.symmetric:
            return self._symmetric(quantile(*self._hist.folded(), self.percentile / 100.0))
        tail = (100.0 - self.percentile) / 200.0
        counts, edges = self._hist.signed()
        return quantile(counts, edges, tail), quantile(counts, edges, 1.0 - tail)

    def _kl_range(self) -> tuple[float, float]:
        """Symmetric: one |x| threshold at half the levels. Asymmetric: each sign's side on its share of the levels."""
        h, codes = self._hist, self.qmax - self.qmin + 1
        if self.symmetric:
            return self._symmetric(kl_threshold(*h.folded(), (codes + 1) // 2))
        positive, negative = max(h.hi, 0.0), max(-h.lo, 0.0)
        pos_levels = max(1, round(codes * positive / (positive + negative)))
        neg_levels = max(1, codes - pos_levels)
        hi = kl_threshold(*h.folded(negative=False), pos_levels) if positive > 0 else h.hi
        lo = -kl_threshold(*h.folded(positive=False), neg_levels) if negative > 0 else h.lo
        return lo, hi

    def _mse_range(self) -> tuple[float, float]:
        steps = self.qmax - self.qmin
        if self.symmetric:
            return self._symmetric(mse_threshold(*self._hist.folded(), steps))
        return mse_asymmetric(*self._hist.signed(), steps)


_SEARCHES: dict[HistogramMethod, Callable[[HistogramObserver], tuple[float, float]]] = {
    "percentile": HistogramObserver._percentile_range,
    "kl": HistogramObserver._kl_range,
    "mse": HistogramObserver._mse_range,
}


def _check_histogram_config(
    method: str, bins: int, percentile: float, qmin: int, qmax: int, axis: int | None, name: str
) -> None:
    where = _where(name)
    if method not in HISTOGRAM_METHODS:
        raise ConfigError(
            f"{where}: unknown histogram method {method!r}; expected one of {', '.join(HISTOGRAM_METHODS)}"
        )
    if axis is not None:
        raise ConfigError(
            f"{where}: {method} calibration is per tensor only, but axis {axis} was asked; use 'minmax' for "
            "per-channel ranges (weights) or a per-tensor granularity"
        )
    if not isinstance(bins, int) or bins < _MIN_BINS:
        raise ConfigError(f"{where}: bins must be an integer >= {_MIN_BINS}, found {bins!r}")
    if not 0.0 < percentile <= 100.0:
        raise ConfigError(f"{where}: percentile must be in (0, 100], found {percentile}")
    if qmin >= qmax:
        raise ConfigError(f"{where}: integer range [{qmin}, {qmax}] is empty; expected qmin < qmax")


# ---- factory --------------------------------------------------------------------------------------------------------


def make_observer(
    algo: str,
    *,
    axis: int | None,
    symmetric: bool,
    qmin: int,
    qmax: int,
    percentile: float = 99.999,
    bins: int = 2048,
    name: str = "",
) -> Observer:
    """The observer for a QuantSpec's `observer` name: minmax (per tensor or per channel), percentile, kl or mse."""
    if algo == "minmax":
        return MinMaxObserver(axis, name=name)
    if algo in HISTOGRAM_METHODS:
        return HistogramObserver(
            bins,
            algo,
            percentile=percentile,
            symmetric=symmetric,
            qmin=qmin,
            qmax=qmax,
            axis=axis,
            name=name,
        )
    raise ConfigError(
        f"{_where(name)}: unknown calibration algorithm {algo!r}; expected one of {', '.join(ALGORITHMS)}"
    )
