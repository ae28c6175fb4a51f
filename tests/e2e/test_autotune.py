"""autotune on the bundled digits CNN with held-out eval_fns (issue 15): a goal the default meets stops at trial 1;
a goal that needs fallback is met by the sensitivity strategy with the fewest float ops (checked against every
smaller fallback set); a goal out of reach returns the best model with goal_met=False; the process pool and a local
Ray cluster return exactly the sequential result."""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from quantir.compiler import StaticQuantConfig, TuningConfig, autotune, convert, prepare
from quantir.compiler.isa import detect_cpu
from quantir.compiler.tuning import TuningWarning
from quantir.compiler.tuning.space import with_fallback
from quantir.tools.digits import bundled_model_path, load_digits_split

MODEL = str(bundled_model_path())
DIGITS = load_digits_split()
_SESSION = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
REFERENCE = _SESSION.run(None, {_SESSION.get_inputs()[0].name: DIGITS.test_x})[0].astype(np.float64)
UNITS = ("node_conv2d", "node_conv2d_1", "node_linear", "node_linear_1")
"""The digits CNN's Conv/Gemm ops (conv1, conv2, fc1, fc2): the compute units fallback chooses from."""


@pytest.fixture(scope="module")
def goal(digits_pair_goal: tuple[float, tuple[str, ...]]) -> float:
    """1 - held-out logit cosine to FP32 that only the best pair of float ops reaches on this CPU (tests/conftest)."""
    return digits_pair_goal[0]


def accuracy(model: Any) -> float:
    """Held-out top-1 accuracy (597 images never used for training or calibration)."""
    return float((np.asarray(model(DIGITS.test_x)).argmax(1) == DIGITS.test_y).mean())


def cosine(model: Any) -> float:
    """Held-out mean cosine of the logits to the FP32 model's, in float64."""
    out = np.asarray(model(DIGITS.test_x), dtype=np.float64)
    return float(np.mean(np.sum(out * REFERENCE, 1) / np.linalg.norm(out, axis=1) / np.linalg.norm(REFERENCE, axis=1)))


def _tune(cfg: TuningConfig, eval_fn: Any = cosine) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TuningWarning)
        return autotune(MODEL, cfg, eval_fn, DIGITS.calib_x)


def test_a_goal_the_default_meets_stops_at_trial_1() -> None:
    q = _tune(TuningConfig([StaticQuantConfig(), StaticQuantConfig(act_algo="minmax")]), accuracy)
    t = q.tuning
    assert t.goal_met and len(t.trials) == 1 and t.best.index == 1 and t.stopped_by == "goal met"
    assert t.baseline == pytest.approx(accuracy(_SESSION_MODEL)) and accuracy(q) >= t.goal
    assert sum(d.quantized for d in q.decisions() if d.op_type in ("Conv", "Gemm")) == 4


def _SESSION_MODEL(x: np.ndarray) -> np.ndarray:
    return np.asarray(_SESSION.run(None, {_SESSION.get_inputs()[0].name: x})[0])


@pytest.mark.xfail(
    detect_cpu().int8_saturates,
    reason=(
        "on x86 CPUs without VNNI/AMX (7-bit weights) the per-op SQNR ranks conv2 above conv1, so cumulative fallback "
        "keeps conv1+conv2+fc2 where conv1+fc2 suffice (measured on an AVX2 AMD EPYC): the greedy order is not optimal"
    ),
    strict=False,
)
def test_a_goal_that_needs_fallback_is_met_with_the_fewest_float_ops(
    goal: float, digits_pair_goal: tuple[float, tuple[str, ...]]
) -> None:
    q = _tune(TuningConfig([StaticQuantConfig()], tolerable_loss=goal))
    t = q.tuning
    assert t.goal_met and t.stopped_by == "goal met"
    assert [r.phase for r in t.trials[:1]] == ["config"] and not t.trials[0].passed
    kept = set(t.best.fallback)
    assert kept == set(digits_pair_goal[1])  # conv1 and fc2 on both CPUs measured
    assert [s.op for s in t.sensitivity] and set(s.op for s in t.sensitivity) == set(UNITS)
    # the fewest: no smaller set of float ops meets the goal (every one of them, converted independently)
    prepared = prepare(MODEL, StaticQuantConfig())
    prepared.calibrate(DIGITS.calib_x)
    for k in range(len(kept)):
        for ops in itertools.combinations(UNITS, k):
            assert cosine(convert(prepared, with_fallback(StaticQuantConfig(), list(ops)))) < t.goal, ops
    # the returned model is the one measured, and each op tuning kept float says so with its gain
    assert cosine(q) == pytest.approx(t.best_result, abs=1e-9)
    rows = {d.name: d for d in q.decisions()}
    for op in kept:
        assert not rows[op].quantized and rows[op].reason.startswith("fallback by tuning: +")
    assert sum(rows[op].quantized for op in set(UNITS) - kept) == 2


def test_an_out_of_reach_goal_returns_the_best_model_and_goal_met_false(goal: float) -> None:
    cfg = TuningConfig([StaticQuantConfig()], tolerable_loss=goal, max_fallback_ops=1)
    with pytest.warns(TuningWarning, match="goal NOT met"):
        q = autotune(MODEL, cfg, cosine, DIGITS.calib_x)
    t = q.tuning
    assert q is not None and t.goal_met is False and "max_fallback_ops" in (t.fallback_note or "")
    assert len(t.best.fallback) <= 1 and t.best_result == max(r.result for r in t.trials if r.result is not None)
    assert cosine(q) == pytest.approx(t.best_result, abs=1e-9)


def _signature(q: Any) -> list[tuple[Any, ...]]:
    return [(r.index, r.phase, r.description, r.result, r.passed) for r in q.tuning.trials] + [(q.tuning.best.index,)]


@pytest.fixture(scope="module")
def sequential(goal: float) -> Any:
    return _tune(TuningConfig([StaticQuantConfig(act_algo=["kl", "mse"])], tolerable_loss=goal))


def test_the_process_pool_returns_the_sequential_result(sequential: Any, goal: float) -> None:
    cfg = TuningConfig([StaticQuantConfig(act_algo=["kl", "mse"])], tolerable_loss=goal, executor="process",
                       workers=2)  # fmt: skip
    assert _signature(_tune(cfg)) == _signature(sequential)


def test_a_local_ray_cluster_returns_the_sequential_result(sequential: Any, goal: float) -> None:
    ray = pytest.importorskip("ray", reason="the tune extra installs ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        cfg = TuningConfig([StaticQuantConfig(act_algo=["kl", "mse"])], tolerable_loss=goal, executor="ray")
        parallel = _tune(cfg)
    finally:
        ray.shutdown()
    assert _signature(parallel) == _signature(sequential)
    assert len(sequential.tuning.trials) > 2  # the comparison covers the config and the fallback phases
