"""A streaming histogram on a power-of-two grid, and the range searches over it (percentile, KL, MSE).

Bins are [k·2^e, (k+1)·2^e) for integers k, so widening the range merges aligned pairs of bins: exact, with no
samples kept, and the same counts whatever way the stream is split into batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["GridHistogram", "kl_threshold", "mse_asymmetric", "mse_threshold", "quantile"]

_MIN_EXPONENT = -100  # bins narrower than 2^-100 resolve nothing a quantizer could use
_MANTISSA_BITS = 24  # float32: x / 2^e stays an exact float32 integer below 2^24
_MAX_SHIFT = 40  # |bin index| < 2^25, so shifting by 40 already maps every index to 0 or -1
_CHUNK = 1 << 18  # elements binned at a time: bounds the temporaries whatever the batch size
_KL_COARSE = 256  # KL candidates evaluated before refining around the best one
_MSE_GRID = 100  # clipping fractions per search pass (then 2·_MSE_GRID + 1 around the best)


def _accumulate(counts: np.ndarray, index: np.ndarray, weights: np.ndarray | None = None) -> None:
    """counts += bincount(index); an index past the end (float32 underflow near a bin edge) joins the last bin."""
    added = np.bincount(index, weights=weights, minlength=counts.size)
    counts += added[: counts.size]
    if added.size > counts.size:
        counts[-1] += added[counts.size :].sum()


@dataclass(slots=True)
class GridHistogram:
    """Counts of float32 values in `capacity` bins of width 2^exponent, plus the exact min and max.

    The exponent is the smallest that fits [lo, hi] into `capacity` aligned bins, so the observed range always spans
    more than capacity/2 - 1 of them; `counts[i]` counts [(start + i)·w, (start + i + 1)·w).
    """

    capacity: int
    counts: np.ndarray = field(init=False)
    exponent: int = _MIN_EXPONENT
    start: int = 0
    lo: float = math.inf
    hi: float = -math.inf

    def __post_init__(self) -> None:
        self.counts = np.zeros(self.capacity, dtype=np.float64)  # float64 counts are exact up to 2^53

    @property
    def width(self) -> float:
        return math.ldexp(1.0, self.exponent)

    @property
    def total(self) -> float:
        return float(self.counts.sum())

    @property
    def used(self) -> int:
        """Number of bins from the one holding `lo` to the one holding `hi`."""
        return math.floor(math.ldexp(self.hi, -self.exponent)) - self.start + 1

    def add(self, x: np.ndarray, lo: float, hi: float) -> None:
        """Count the finite float32 values `x` whose min and max are `lo` and `hi`."""
        new_lo, new_hi = min(self.lo, lo), max(self.hi, hi)
        exponent = self._fitting_exponent(new_lo, new_hi)
        start = math.floor(math.ldexp(new_lo, -exponent))
        if (exponent, start) != (self.exponent, self.start):
            self._regrid(exponent, start)
        self.lo, self.hi = new_lo, new_hi
        scale, offset = np.float32(math.ldexp(1.0, -exponent)), np.float32(start)
        flat = x.reshape(-1)
        for begin in range(0, flat.size, _CHUNK):
            t = flat[begin : begin + _CHUNK] * scale  # exact: a power-of-two scaling of float32
            np.floor(t, out=t)
            t -= offset  # exact: both are integers below 2^24
            _accumulate(self.counts, t.astype(np.intp))

    def _fits(self, exponent: int, lo: float, hi: float) -> bool:
        return math.floor(math.ldexp(hi, -exponent)) - math.floor(math.ldexp(lo, -exponent)) < self.capacity

    def _fitting_exponent(self, lo: float, hi: float) -> int:
        amax = max(abs(lo), abs(hi))
        floor_exp = math.frexp(amax)[1] - _MANTISSA_BITS if amax > 0 else _MIN_EXPONENT
        span_exp = math.floor(math.log2((hi - lo) / self.capacity)) if hi > lo else _MIN_EXPONENT
        exponent = max(self.exponent, floor_exp, span_exp, _MIN_EXPONENT)
        while not self._fits(exponent, lo, hi):
            exponent += 1
        return exponent

    def _regrid(self, exponent: int, start: int) -> None:
        """Move the counts onto the grid 2^exponent starting at `start`: merge aligned bins, then shift."""
        occupied = np.flatnonzero(self.counts)
        shift = min(exponent - self.exponent, _MAX_SHIFT)
        index = ((occupied.astype(np.int64) + self.start) >> shift) - start
        counts = np.zeros_like(self.counts)
        _accumulate(counts, index, self.counts[occupied])
        self.counts, self.exponent, self.start = counts, exponent, start

    # ---- views ---------------------------------------------------------------------------------------------------

    def signed(self) -> tuple[np.ndarray, np.ndarray]:
        """(counts, edges) over [lo, hi]; the outer edges are the exact min and max."""
        n = self.used
        edges = (self.start + np.arange(n + 1, dtype=np.float64)) * self.width
        return self.counts[:n], np.clip(edges, self.lo, self.hi)

    def folded(self, *, positive: bool = True, negative: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(counts, edges) of |x| over the chosen signs, from 0 up; exact, since the grid is aligned at 0.

        Bin k >= 0 holds [k·w, (k+1)·w) and bin k < 0 holds |x| in ((-k-1)·w, -k·w], that is |x|-bin -k-1.
        """
        k = self.start + np.arange(self.used, dtype=np.int64)
        keep = ((k >= 0) & positive) | ((k < 0) & negative)
        index = np.where(k >= 0, k, -k - 1)[keep]
        size = int(index.max()) + 1 if index.size else 1
        counts = np.zeros(size, dtype=np.float64)
        _accumulate(counts, index, self.counts[: self.used][keep])
        top = max(self.hi if positive else 0.0, -self.lo if negative else 0.0, 0.0)
        bottom = max(self.lo if positive else 0.0, -self.hi if negative else 0.0, 0.0)
        edges = np.arange(size + 1, dtype=np.float64) * self.width
        return counts, np.clip(edges, min(bottom, top), top)


# ---- percentile ------------------------------------------------------------------------------------------------------


def quantile(counts: np.ndarray, edges: np.ndarray, fraction: float) -> float:
    """The value below which `fraction` of the mass lies, interpolated linearly inside its bin.

    ONNX Runtime takes the left edge of the bin where the CDF reaches the fraction; interpolating moves the answer by
    less than one bin and makes it track np.percentile.
    """
    cum = np.cumsum(counts)
    target = fraction * cum[-1]
    if target <= 0:
        return float(edges[np.flatnonzero(counts)[0]])
    i = min(int(np.searchsorted(cum, target, side="left")), counts.size - 1)
    inside = min(max((target - (cum[i] - counts[i])) / counts[i], 0.0), 1.0)
    return float(edges[i] + inside * (edges[i + 1] - edges[i]))


# ---- KL divergence (TensorRT entropy calibration) -------------------------------------------------------------------


def _xlogx(v: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(v > 0, v * np.log(np.where(v > 0, v, 1.0)), 0.0)


@dataclass(frozen=True, slots=True)
class _KLTables:
    """Prefix sums that give KL(p||q) of any window in O(levels)."""

    h: np.ndarray
    cum: np.ndarray  # sum of h[:i]
    nonzero: np.ndarray  # count of h[:i] > 0
    hlogh: np.ndarray  # sum of h log h over h[:i]

    @classmethod
    def of(cls, h: np.ndarray) -> _KLTables:
        def prefix(v: np.ndarray) -> np.ndarray:
            return np.concatenate(([0.0], np.cumsum(v, dtype=np.float64)))

        return cls(h, prefix(h), prefix(h > 0), prefix(_xlogx(h)))


def _kl_divergence(t: _KLTables, kept: np.ndarray, levels: int) -> np.ndarray:
    """KL(p||q) for windows of the first `kept` bins (each >= levels), in closed form.

    p: the window with the outliers added to its last bin. q: the window without outliers, merged into `levels`
    groups of near-equal size and spread evenly over the bins where p is nonzero (TensorRT's algorithm; ORT and
    MXNet instead pile every remainder bin into the last group). With S_g the group sums and N_g their nonzero bins,
    KL = (Σp log p - Σ_g P_g log(S_g / N_g)) / P - log P + log Σ_g S_g, where P_g is the mass of p in group g.
    """
    total = t.cum[-1]
    outliers = total - t.cum[kept]
    last = t.h[kept - 1] + outliers
    plogp = t.hlogh[kept - 1] + _xlogx(last)
    bounds = (np.arange(levels + 1)[None, :] * kept[:, None]) // levels
    sums = t.cum[bounds[:, 1:]] - t.cum[bounds[:, :-1]]
    nonzero = t.nonzero[bounds[:, 1:]] - t.nonzero[bounds[:, :-1]]
    nonzero[:, -1] += (t.h[kept - 1] == 0) & (outliers > 0)  # the folded outliers make p's last bin nonzero
    with np.errstate(divide="ignore", invalid="ignore"):
        log_q = np.where(sums > 0, np.log(np.where(sums > 0, sums, 1.0) / np.maximum(nonzero, 1.0)), 0.0)
        plogq = (sums * log_q).sum(axis=1) + outliers * log_q[:, -1]
        kl = (plogp - plogq) / total - math.log(total) + np.log(t.cum[kept])
    unsupported = (sums[:, -1] == 0) & (outliers > 0)  # q is 0 where p holds the outliers: KL is infinite
    return np.where(unsupported, np.inf, kl)


def kl_threshold(counts: np.ndarray, edges: np.ndarray, levels: int) -> float:
    """The |x| threshold minimizing KL(p||q) over every window of at least `levels` bins (TensorRT's 2048/128).

    Every window size is a candidate; past _KL_COARSE of them a strided pass is refined bin by bin around its best.
    A histogram with no more bins than `levels` keeps its full range.
    """
    if counts.size <= levels or counts.sum() == 0:
        return float(edges[-1])
    tables = _KLTables.of(counts)
    candidates = np.arange(levels, counts.size + 1)
    stride = -(-candidates.size // _KL_COARSE)
    if stride > 1:
        coarse = np.append(candidates[::stride], counts.size)
        best = int(coarse[np.argmin(_kl_divergence(tables, coarse, levels))])
        candidates = np.arange(max(levels, best - stride), min(counts.size, best + stride) + 1)
    kept = int(candidates[np.argmin(_kl_divergence(tables, candidates, levels))])
    return float(edges[kept])


# ---- MSE search -----------------------------------------------------------------------------------------------------


def _refined(fractions: np.ndarray, best: int) -> np.ndarray:
    """2·_MSE_GRID + 1 fractions between the neighbours of the best coarse one."""
    lo = fractions[best - 1] if best > 0 else fractions[0] / 2
    hi = fractions[min(best + 1, fractions.size - 1)]
    return np.linspace(lo, hi, 2 * _MSE_GRID + 1)


def _clip_error(
    counts: np.ndarray, centers: np.ndarray, limits: np.ndarray, *, above: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(squared clipping error, clipped count) of values beyond each limit, by bin centers.

    With the bins beyond a limit t holding counts n_i at centers c_i, the error is sum n_i (c_i - t)^2 =
    S2 - 2t S1 + t^2 S0 for the moment sums S_k = sum n_i c_i^k, read off cumulative sums: O(bins + limits) rather
    than a limits x bins matrix (the MSE search is most of a small model's conversion otherwise).
    """
    n = counts.astype(np.float64)
    c = centers.astype(np.float64)
    zero = np.zeros(1)
    s0, s1, s2 = (np.concatenate([zero, np.cumsum(n * c**k)]) for k in range(3))
    if above:  # bins with c > t: the suffix from the first center above t
        first = np.searchsorted(c, limits, side="right")
        m0, m1, m2 = s0[-1] - s0[first], s1[-1] - s1[first], s2[-1] - s2[first]
    else:  # bins with c < t: the prefix up to the first center at or above t
        last = np.searchsorted(c, limits, side="left")
        m0, m1, m2 = s0[last], s1[last], s2[last]
    error = np.maximum(m2 - 2.0 * limits * m1 + limits**2 * m0, 0.0)
    return error, m0


def _symmetric_error(counts: np.ndarray, centers: np.ndarray, t: np.ndarray, steps: int) -> np.ndarray:
    clip, n_clipped = _clip_error(counts, centers, t, above=True)
    step = 2.0 * t / steps  # the scale ONNX Runtime derives from [-t, t]
    return clip + (counts.sum() - n_clipped) * step**2 / 12.0


def mse_threshold(counts: np.ndarray, edges: np.ndarray, steps: int) -> float:
    """The |x| threshold t minimizing clipping error + (in-range count)·s²/12 with s = 2t / steps."""
    amax = float(edges[-1])
    if amax <= 0:
        return amax
    centers = (edges[:-1] + edges[1:]) / 2.0
    fractions = np.arange(1, _MSE_GRID + 1) / _MSE_GRID
    best = int(np.argmin(_symmetric_error(counts, centers, amax * fractions, steps)))
    fine = _refined(fractions, best)
    return amax * float(fine[np.argmin(_symmetric_error(counts, centers, amax * fine, steps))])


def _side_fractions(bound: float, fractions: np.ndarray) -> np.ndarray:
    """Clipping candidates on one side: fractions of the bound, or none where the bound is on the zero side."""
    return fractions if bound != 0.0 else np.ones(1)


def _asymmetric_error(
    counts: np.ndarray, centers: np.ndarray, lows: np.ndarray, highs: np.ndarray, steps: int
) -> np.ndarray:
    low_clip, n_low = _clip_error(counts, centers, lows, above=False)
    high_clip, n_high = _clip_error(counts, centers, highs, above=True)
    step = (np.maximum(highs, 0.0)[None, :] - np.minimum(lows, 0.0)[:, None]) / steps  # zero stays in the range
    in_range = counts.sum() - n_low[:, None] - n_high[None, :]
    return low_clip[:, None] + high_clip[None, :] + in_range * step**2 / 12.0


def _best_pair(
    counts: np.ndarray,
    centers: np.ndarray,
    bounds: tuple[float, float],
    fractions: tuple[np.ndarray, np.ndarray],
    steps: int,
) -> tuple[int, int]:
    error = _asymmetric_error(counts, centers, bounds[0] * fractions[0], bounds[1] * fractions[1], steps)
    ia, ib = np.unravel_index(int(np.argmin(error)), error.shape)
    return int(ia), int(ib)


def mse_asymmetric(counts: np.ndarray, edges: np.ndarray, steps: int) -> tuple[float, float]:
    """(lo, hi) minimizing the estimated MSE over a grid of (min·a, max·b) pairs, then a finer grid around the best.

    A bound on the far side of zero (e.g. the minimum of post-ReLU data) is never clipped: the range includes zero
    anyway, so clipping it cannot shrink the scale.
    """
    lo, hi = float(edges[0]), float(edges[-1])
    centers = (edges[:-1] + edges[1:]) / 2.0
    bounds = (min(lo, 0.0), max(hi, 0.0))
    grid = np.arange(1, _MSE_GRID + 1) / _MSE_GRID
    fa, fb = _side_fractions(bounds[0], grid), _side_fractions(bounds[1], grid)
    ia, ib = _best_pair(counts, centers, bounds, (fa, fb), steps)
    fa = _refined(fa, ia) if fa.size > 1 else fa
    fb = _refined(fb, ib) if fb.size > 1 else fb
    ia, ib = _best_pair(counts, centers, bounds, (fa, fb), steps)
    new_lo = lo if bounds[0] == 0.0 else bounds[0] * float(fa[ia])
    new_hi = hi if bounds[1] == 0.0 else bounds[1] * float(fb[ib])
    return max(new_lo, lo), min(new_hi, hi)
