"""Tests for compiler/observers.py and compiler/histogram.py on real numpy streams with fixed seeds.

Batch-split invariance is exact (tolerance 0): the power-of-two grid merges aligned bins, so a stream split into
50 batches, even one whose later batches widen the range 100x, gives the very counts of a single batch.
"""

from __future__ import annotations

import itertools
import re
from typing import TypeVar

import numpy as np
import pytest

from quantir.compiler.calibration.histogram import _kl_divergence, _KLTables
from quantir.compiler.calibration.observers import (
    ALGORITHMS,
    HistogramObserver,
    MinMaxObserver,
    Observer,
    make_observer,
)
from quantir.compiler.qparams.scales import compute_qparams
from quantir.ir import CalibrationError, ConfigError, DType, Granularity, QuantSpec, Scheme

HIST = ("percentile", "kl", "mse")
ObserverT = TypeVar("ObserverT", bound=Observer)


def stream(seed: int, n_batches: int, size: int, widen_at: int | None = None) -> list[np.ndarray]:
    """Gaussian batches; from `widen_at` on, each batch is 100x wider."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_batches):
        scale = 100.0 if widen_at is not None and i >= widen_at else 1.0
        out.append((rng.standard_normal(size) * scale + 0.3).astype(np.float32))
    return out


def heavy_tailed(rng: np.random.Generator, n: int, outliers: int) -> np.ndarray:
    """Laplace(0, 1) with `outliers` values of magnitude 40 to 80, about 2 per million as in transformer activations.

    Rarer than about 1e-5 is what makes clipping pay: an outlier clipped from 60 to 10 costs what rounding at the
    min/max scale costs some 100 000 values.
    """
    x = rng.laplace(size=n)
    at = rng.choice(n, outliers, replace=False)
    x[at] = rng.choice([-1.0, 1.0], outliers) * rng.uniform(40.0, 80.0, outliers)
    return x.astype(np.float32)


def fake_quant_mse(x: np.ndarray, lo: float, hi: float, qmin: int, qmax: int, symmetric: bool) -> float:
    """A plain uniform quantizer: symmetric s = max|r| / ((qmax - qmin) / 2), zp midpoint; else zero in range."""
    if symmetric:
        scale, zp = max(-lo, hi) / ((qmax - qmin) / 2), round((qmin + qmax) / 2)
    else:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = (hi - lo) / (qmax - qmin)
        zp = round(qmin - lo / scale)
    q = np.clip(np.round(x / scale) + zp, qmin, qmax)
    return float(np.mean(((q - zp) * scale - x) ** 2))


def feed(obs: ObserverT, batches: list[np.ndarray]) -> ObserverT:
    for b in batches:
        obs.update(b)
    return obs


# ---- minmax ---------------------------------------------------------------------------------------------------------


def test_minmax_per_tensor_equals_numpy_over_the_stream() -> None:
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((4, 7, 5)).astype(np.float32) * (i + 1) for i in range(30)]
    obs = feed(MinMaxObserver(), batches)
    lo, hi = obs.range()
    whole = np.concatenate(batches)
    assert lo.shape == hi.shape == () and lo.dtype == np.float32
    assert (lo, hi) == (whole.min(), whole.max())
    assert obs.num_batches == 30


@pytest.mark.parametrize("axis", [-1, 1, 0, -3])
def test_minmax_per_channel_equals_numpy_over_the_stream(axis: int) -> None:
    rng = np.random.default_rng(1)
    batches = [(rng.standard_normal((3, 6, 8)) * rng.uniform(0.1, 10.0, 8)).astype(np.float32) for _ in range(20)]
    lo, hi = feed(MinMaxObserver(axis), batches).range()
    whole = np.stack(batches)  # a new leading axis: the channel axis moves by one when it counts from the front
    reduce = tuple(i for i in range(4) if i != (axis % 3) + 1)
    np.testing.assert_array_equal(lo, whole.min(axis=reduce))
    np.testing.assert_array_equal(hi, whole.max(axis=reduce))
    assert lo.shape == (batches[0].shape[axis],)


def test_minmax_ranges_feed_compute_qparams() -> None:
    rng = np.random.default_rng(2)
    w = rng.standard_normal((16, 3, 3, 3)).astype(np.float32)
    lo, hi = feed(MinMaxObserver(axis=0), [w]).range()
    q = compute_qparams(lo, hi, QuantSpec(DType.I8, Scheme.SYM, Granularity.per_channel(0)))
    np.testing.assert_allclose(q.scale, np.maximum(-lo, hi) / 127, rtol=1e-6)
    lo, hi = feed(HistogramObserver(method="mse"), [w]).range()
    assert compute_qparams(lo, hi, QuantSpec(DType.U8, Scheme.ASYM)).scale.shape == ()


def test_minmax_skips_nan_and_counts_it() -> None:
    x = np.array([[1.0, np.nan, -2.0], [np.nan, 3.0, 0.5]], dtype=np.float32)
    obs = feed(MinMaxObserver(), [x, np.array([0.25], np.float32)])
    assert obs.range() == (-2.0, 3.0) and obs.nan_count == 2


def test_minmax_channel_of_only_nan_is_an_error() -> None:
    x = np.array([[1.0, np.nan], [2.0, np.nan]], dtype=np.float32)
    obs = feed(MinMaxObserver(axis=1, name="attn.softmax"), [x])
    with pytest.raises(CalibrationError, match=r"'attn.softmax': only NaN observed \(channels \[1\] on axis 1"):
        obs.range()


def test_minmax_channel_count_must_not_change() -> None:
    obs = feed(MinMaxObserver(axis=-1, name="w"), [np.zeros((2, 4), np.float32)])
    with pytest.raises(CalibrationError, match=r"'w', batch 2: 5 channels on axis -1 .* earlier batches had 4"):
        obs.update(np.zeros((2, 5), np.float32))


def test_minmax_axis_out_of_range() -> None:
    with pytest.raises(CalibrationError, match=r"channel axis 2 is out of range for shape \(3, 4\)"):
        MinMaxObserver(axis=2).update(np.zeros((3, 4), np.float32))


# ---- histogram: streaming -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("method", HIST)
def test_histogram_is_exactly_batch_split_invariant_when_later_batches_widen_100x(method: str, symmetric: bool) -> None:
    batches = stream(3, 50, 2000, widen_at=30)
    kwargs = {"symmetric": symmetric, "qmin": -128, "qmax": 127}
    split = feed(HistogramObserver(512, method, **kwargs), batches)  # type: ignore[arg-type]
    whole = feed(HistogramObserver(512, method, **kwargs), [np.concatenate(batches)])  # type: ignore[arg-type]
    backwards = feed(HistogramObserver(512, method, **kwargs), batches[::-1])  # type: ignore[arg-type]
    for other in (whole, backwards):
        np.testing.assert_array_equal(split.histogram()[0], other.histogram()[0])
        np.testing.assert_array_equal(split.histogram()[1], other.histogram()[1])
        assert split.range() == other.range()
    counts, edges = split.histogram()
    data = np.concatenate(batches)
    assert counts.sum() == data.size and (edges[0], edges[-1]) == (data.min(), data.max())
    assert 512 <= counts.size <= 1024  # the observed range keeps at least `bins` bins after widening


def test_histogram_counts_match_numpy_on_its_own_edges() -> None:
    data = np.concatenate(stream(4, 10, 3000, widen_at=5))
    counts, edges = feed(HistogramObserver(256), [data]).histogram()
    width = edges[2] - edges[1]
    start = np.floor(data.min() / width)
    reference = np.bincount((np.floor(data / width) - start).astype(np.int64))
    np.testing.assert_array_equal(counts, reference)


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_memory_does_not_grow_with_batches(algo: str) -> None:
    def nbytes(n_batches: int) -> int:
        obs = make_observer(algo, axis=None, symmetric=False, qmin=0, qmax=255)
        for i, b in enumerate(stream(5, n_batches, 64)):
            obs.update(b * (1.0 + i))  # keeps widening, so the histogram keeps re-gridding
        return obs.nbytes

    assert nbytes(10) == nbytes(1000) > 0


def test_constant_first_batch_then_wider_data() -> None:
    obs = HistogramObserver(64, "percentile")
    obs.update(np.zeros(100, np.float32))
    obs.update(np.linspace(-1e6, 1e6, 1001, dtype=np.float32))
    counts, _ = obs.histogram()
    assert counts.sum() == 1101 and counts.max() >= 100
    lo, hi = obs.range()
    assert -1e6 <= lo < -9e5 and 9e5 < hi <= 1e6


# ---- histogram: range searches ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [99.9, 99.999])
def test_percentile_symmetric_cuts_abs_cdf_like_numpy(p: float) -> None:
    rng = np.random.default_rng(6)
    batches = [
        np.concatenate([rng.standard_normal(20000), rng.uniform(-50, 50, 4)]).astype(np.float32) for _ in range(10)
    ]
    obs = feed(HistogramObserver(2048, "percentile", percentile=p, symmetric=True), batches)
    lo, hi = obs.range()
    width = np.diff(obs.histogram()[1])[1]
    data = np.concatenate(batches)
    expected = np.percentile(np.abs(data), p)
    threshold = max(-float(lo), float(hi))  # (-t, t), each side clamped to the observed min and max
    assert abs(threshold - expected) <= 2 * width
    assert (lo, hi) == (max(-threshold, data.min()), min(threshold, data.max()))


def test_percentile_asymmetric_cuts_half_the_rest_off_each_tail_like_onnxruntime() -> None:
    rng = np.random.default_rng(7)
    data = np.concatenate([rng.gamma(2.0, 1.0, 400000) - 1.0, rng.uniform(-30, 60, 40)]).astype(np.float32)
    obs = feed(HistogramObserver(2048, "percentile", percentile=99.99), np.array_split(data, 20))
    lo, hi = obs.range()
    width = np.diff(obs.histogram()[1])[1]
    expected = np.percentile(data, [0.005, 99.995])  # (100 - p) / 2 percent per tail
    assert abs(float(lo) - expected[0]) <= 2 * width and abs(float(hi) - expected[1]) <= 2 * width


def test_percentile_is_clamped_to_the_observed_range() -> None:
    relu = np.maximum(np.random.default_rng(8).standard_normal(10000), 0).astype(np.float32)
    lo, hi = feed(HistogramObserver(method="percentile", percentile=100.0, symmetric=True), [relu]).range()
    assert (lo, hi) == (0.0, relu.max())


@pytest.mark.parametrize(("symmetric", "qmin", "qmax"), [(True, -128, 127), (False, 0, 255)])
@pytest.mark.parametrize("method", ["kl", "mse"])
def test_kl_and_mse_clip_heavy_tails_and_beat_minmax(method: str, symmetric: bool, qmin: int, qmax: int) -> None:
    rng = np.random.default_rng(9)
    calib = [heavy_tailed(rng, 50000, 1 if i in (3, 12) else 0) for i in range(20)]
    held_out = heavy_tailed(rng, 2_000_000, 4)
    obs = feed(make_observer(method, axis=None, symmetric=symmetric, qmin=qmin, qmax=qmax), calib)
    lo, hi = (float(v) for v in obs.range())
    mlo, mhi = (float(v) for v in feed(MinMaxObserver(), calib).range())
    assert max(-lo, hi) < 0.5 * max(-mlo, mhi)
    ours = fake_quant_mse(held_out, lo, hi, qmin, qmax, symmetric)
    minmax = fake_quant_mse(held_out, mlo, mhi, qmin, qmax, symmetric)
    assert ours < 0.8 * minmax


def test_kl_closed_form_equals_the_direct_computation() -> None:
    def direct(h: np.ndarray, kept: int, levels: int) -> float:
        p = h[:kept].copy()
        p[-1] += h[kept:].sum()
        bounds = np.arange(levels + 1) * kept // levels
        q = np.zeros(kept)
        for a, b in itertools.pairwise(bounds):
            nonzero = p[a:b] != 0
            q[a:b][nonzero] = h[a:b].sum() / max(nonzero.sum(), 1)
        p, q = p / p.sum(), q / q.sum()
        m = p > 0
        return np.inf if (q[m] == 0).any() else float(np.sum(p[m] * np.log(p[m] / q[m])))

    rng = np.random.default_rng(10)
    h = np.bincount(np.minimum(np.abs(rng.laplace(size=20000)) * 40, 599).astype(int), minlength=600).astype(float)
    h[rng.integers(0, 600, 50)] = 0  # holes give windows whose last group is empty: infinite KL
    kept = np.arange(32, 601)
    fast = _kl_divergence(_KLTables.of(h), kept, 32)
    slow = np.array([direct(h, int(k), 32) for k in kept])
    np.testing.assert_array_equal(np.isinf(fast), np.isinf(slow))
    np.testing.assert_allclose(fast[np.isfinite(slow)], slow[np.isfinite(slow)], atol=1e-12)


@pytest.mark.parametrize("method", HIST)
def test_results_stay_inside_the_observed_range(method: str) -> None:
    rng = np.random.default_rng(11)
    data = (rng.standard_normal(50000) * 0.1 + 5.0).astype(np.float32)  # entirely positive, far from zero
    for symmetric in (False, True):
        lo, hi = feed(HistogramObserver(method=method, symmetric=symmetric), [data]).range()  # type: ignore[arg-type]
        assert data.min() <= lo <= hi <= data.max()


# ---- degenerate data and errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ALGORITHMS)
@pytest.mark.parametrize("value", [0.0, -3.5, 1e30])
def test_constant_data(algo: str, value: float) -> None:
    obs = make_observer(algo, axis=None, symmetric=algo != "mse", qmin=-128, qmax=127)
    feed(obs, [np.full((4, 8), value, np.float32)] * 3)
    assert obs.range() == (np.float32(value), np.float32(value))


NON_FINITE = [(a, np.inf, "(0 NaN, 3 Inf)") for a in ALGORITHMS] + [(a, np.nan, "(3 NaN, 0 Inf)") for a in HIST]


@pytest.mark.parametrize(("algo", "bad", "found"), NON_FINITE)  # minmax skips NaN: test_minmax_skips_nan_...
def test_non_finite_values_name_the_tensor_and_count(algo: str, bad: float, found: str) -> None:
    obs = make_observer(algo, axis=None, symmetric=False, qmin=0, qmax=255, name="/encoder/gelu")
    obs.update(np.ones(10, np.float32))
    x = np.ones(1000, np.float32)
    x[[5, 50, 500]] = bad
    with pytest.raises(
        CalibrationError, match=rf"'/encoder/gelu', batch 2: 3 non-finite values {re.escape(found)} among 1000"
    ):
        obs.update(x)


def test_float64_that_overflows_float32_is_an_error() -> None:
    with pytest.raises(CalibrationError, match="float64 values overflow float32"):
        HistogramObserver().update(np.array([1.0, 1e300]))


@pytest.mark.parametrize("dtype", [np.float16, np.float64, np.int8])
def test_other_dtypes_give_the_float32_result(dtype: type) -> None:
    x: np.ndarray = (np.random.default_rng(12).standard_normal(5000) * 20).astype(dtype)
    for algo in ALGORITHMS:
        a = feed(make_observer(algo, axis=None, symmetric=False, qmin=0, qmax=255), [x]).range()
        b = feed(make_observer(algo, axis=None, symmetric=False, qmin=0, qmax=255), [x.astype(np.float32)]).range()
        assert a == b


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_no_data_is_an_error(algo: str) -> None:
    obs = make_observer(algo, axis=None, symmetric=True, qmin=-128, qmax=127, name="x")
    obs.update(np.zeros((0, 3), np.float32))
    with pytest.raises(CalibrationError, match=r"'x': no data observed \(1 batches, all empty\)"):
        obs.range()


def test_unknown_algorithm_lists_the_allowed_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown calibration algorithm 'entropy'; expected one of minmax, percentile, "
    ):
        make_observer("entropy", axis=None, symmetric=True, qmin=-128, qmax=127)


def test_per_channel_histogram_is_refused() -> None:
    with pytest.raises(
        ConfigError, match=r"'w': kl calibration is per tensor only, but axis 0 was asked; use 'minmax'"
    ):
        make_observer("kl", axis=0, symmetric=True, qmin=-128, qmax=127, name="w")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bins": 8}, "bins must be an integer >= 16"),
        ({"percentile": 0.0}, r"percentile must be in \(0, 100\]"),
        ({"qmin": 5, "qmax": 5}, r"integer range \[5, 5\] is empty"),
        ({"method": "median"}, "unknown histogram method 'median'; expected one of percentile, kl, mse"),
    ],
)
def test_invalid_histogram_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        HistogramObserver(**kwargs)  # type: ignore[arg-type]


def test_non_numeric_data_is_refused() -> None:
    with pytest.raises(CalibrationError, match="cannot observe <U1 data"):
        MinMaxObserver(name="t").update(np.array(["a"]))


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_factory_builds_observers(algo: str) -> None:
    obs = make_observer(algo, axis=None, symmetric=True, qmin=-128, qmax=127, name="t")
    assert isinstance(obs, Observer) and obs.name == "t" and obs.num_batches == 0
