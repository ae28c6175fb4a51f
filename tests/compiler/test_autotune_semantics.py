"""autotune's INC 3.x semantics, as INC tests them (scripted eval_fn sequences on a real model): expansion order,
duplicate skipping, the relative stop rule, re-quantize-best, max_trials; and what quantir adds: policy "best",
absolute and lower-is-better criteria, a timeout, never None, and clear errors for bad eval_fn results."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from quantir.compiler import QuantizedModel, StaticQuantConfig, TuningConfig, autotune
from quantir.compiler.tuning import TuningWarning
from quantir.compiler.tuning.space import trial_configs
from quantir.ir import ConfigError, QuantirError
from quantir.tools.digits import bundled_model_path, load_digits_split

MODEL = str(bundled_model_path())
CALIB = load_digits_split().calib_x[:32]


class Scripted:
    """eval_fn returning `values` in order (the first one is the float baseline); records the models it saw."""

    def __init__(self, *values: Any) -> None:
        self.values: Iterator[Any] = iter(values)
        self.models: list[Any] = []

    def __call__(self, model: Any) -> Any:
        self.models.append(model)
        value = next(self.values)
        if isinstance(value, BaseException):
            raise value
        return value


def _tune(cfg: TuningConfig, eval_fn: Callable[[Any], Any]) -> QuantizedModel:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TuningWarning)
        return autotune(MODEL, cfg, eval_fn, CALIB)


def test_list_fields_expand_in_signature_order_sets_concatenate_and_duplicates_are_skipped() -> None:
    space = [StaticQuantConfig(act_algo=["kl", "minmax"], act_sym=[False, True]),  # act_sym comes first in the class
             StaticQuantConfig(act_algo="kl"),  # the same as the first trial: skipped
             StaticQuantConfig(smooth_quant=True, smooth_quant_alpha=[0.3, 0.5])]  # fmt: skip
    got = [(c.act_sym, c.act_algo, c.smooth_quant_alpha) for c in trial_configs(space)]
    assert got == [(False, "kl", None), (False, "minmax", None), (True, "kl", None), (True, "minmax", None),
                   (False, "mse", 0.3), (False, "mse", 0.5)]  # fmt: skip


def test_stops_at_the_first_trial_within_the_relative_loss_and_keeps_its_model() -> None:
    space = StaticQuantConfig(act_algo=["kl", "minmax", "mse"])
    script = Scripted(0.9, 0.80, 0.892, 0.899)  # goal 0.9 * 0.99 = 0.891: trial 2 meets it
    q = _tune(TuningConfig([space], tolerable_loss=0.01), script)
    assert len(script.models) == 3  # baseline, trial 1, trial 2: trial 3 never runs
    assert q.tuning.goal_met and q.tuning.best.index == 2 and q.tuning.stopped_by == "goal met"
    assert q.config.act_algo == "minmax" and math.isclose(q.tuning.goal, 0.891)
    assert q is script.models[-1]  # the best was the last trial: its model is returned, not re-quantized


def test_the_best_config_is_re_quantized_when_it_was_not_the_last_trial() -> None:
    space = StaticQuantConfig(act_algo=["kl", "minmax", "mse"])
    script = Scripted(1.0, 0.95, 0.97, 0.96)
    q = _tune(TuningConfig([space], fallback=False), script)
    assert not q.tuning.goal_met and q.tuning.best.index == 2 and q.tuning.stopped_by == "config set exhausted"
    assert q.config.act_algo == "minmax"
    assert all(q is not m for m in script.models)  # converted again from the best config
    assert q.tuning.fallback_note == "fallback=False"


def test_max_trials_caps_the_walk_and_an_unmet_goal_still_returns_the_best_model_with_a_warning() -> None:
    space = StaticQuantConfig(act_algo=["kl", "minmax", "mse"], act_sym=[False, True])
    script = Scripted(1.0, 0.5, 0.7, 0.6, 0.99)
    with pytest.warns(TuningWarning, match="goal NOT met"):
        q = autotune(MODEL, TuningConfig([space], max_trials=3), script, CALIB)
    assert isinstance(q, QuantizedModel) and len(q.tuning.trials) == 3 and q.tuning.stopped_by == "max_trials"
    assert q.tuning.best.index == 2 and q.tuning.goal_met is False
    assert q(CALIB[:2]).shape == (2, 10)


def test_policy_best_evaluates_the_budget_and_keeps_the_best_passing_trial() -> None:
    space = StaticQuantConfig(act_algo=["kl", "minmax", "mse"])
    q = _tune(TuningConfig([space], policy="best"), Scripted(1.0, 0.995, 0.999, 0.997))
    assert len(q.tuning.trials) == 3 and q.tuning.best.index == 2 and q.config.act_algo == "minmax"


def test_absolute_and_lower_is_better_criteria() -> None:
    space = StaticQuantConfig(act_algo=["kl", "minmax", "mse"])
    q = _tune(TuningConfig([space], criterion="absolute", tolerable_loss=0.02), Scripted(0.9, 0.87, 0.885, 0.9))
    assert q.tuning.best.index == 2 and math.isclose(q.tuning.goal, 0.88)  # baseline - 0.02
    q = _tune(TuningConfig([space], higher_is_better=False, tolerable_loss=0.1), Scripted(2.0, 2.5, 2.1, 2.0))
    assert q.tuning.best.index == 2 and math.isclose(q.tuning.goal, 2.2)  # a loss: at most baseline * 1.1


def test_no_trial_starts_after_the_timeout() -> None:
    calls: list[Any] = []

    def slow(model: Any) -> float:
        calls.append(model)
        if len(calls) == 1:
            return 1.0  # the baseline
        time.sleep(0.3)
        return 0.5

    space = StaticQuantConfig(act_algo=["kl", "minmax", "mse"], act_sym=[False, True])
    q = _tune(TuningConfig([space], timeout=0.5, fallback=False), slow)
    assert q.tuning.stopped_by == "timeout" and 0 < len(q.tuning.trials) < 6
    assert all(t.started < 0.5 for t in q.tuning.trials)  # honored within one trial's time


def test_an_eval_fn_that_raises_names_the_trial_stops_cleanly_and_keeps_the_best_so_far() -> None:
    space = StaticQuantConfig(act_algo=["kl", "minmax", "mse"])
    q = _tune(TuningConfig([space]), Scripted(1.0, 0.5, RuntimeError("dataset missing"), 0.99))
    t = q.tuning
    assert t.stopped_by == "eval_fn error" and t.best.index == 1 and len(t.trials) == 2
    assert "trial 2" in t.error and "act_algo='minmax'" in t.error and "RuntimeError: dataset missing" in t.error


@pytest.mark.parametrize(("value", "message"), [(float("nan"), "returned nan"), ("0.9", "returned str '0.9'"),
                                                (None, "returned NoneType")])  # fmt: skip
def test_an_eval_fn_result_that_is_not_a_finite_number_stops_tuning_with_the_trial_named(
    value: Any, message: str
) -> None:
    q = _tune(TuningConfig([StaticQuantConfig(act_algo=["kl", "minmax"])]), Scripted(1.0, 0.5, value))
    assert q.tuning.stopped_by == "eval_fn error" and q.tuning.best.index == 1
    assert message in q.tuning.error and "trial 2" in q.tuning.error


def test_bad_tuning_input_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="config_set is empty"):
        autotune(MODEL, TuningConfig([]), lambda m: 1.0, CALIB)
    with pytest.raises(ConfigError, match=r"config_set\[1\] is a dict"):
        autotune(MODEL, TuningConfig([StaticQuantConfig(), {"act_sym": True}]), lambda m: 1.0, CALIB)
    with pytest.raises(QuantirError, match=r"eval_fn on the float model .* raised ZeroDivisionError"):
        autotune(MODEL, TuningConfig([StaticQuantConfig()]), lambda m: 1 / 0, CALIB)
    with pytest.raises(QuantirError, match="eval_fn on the float model returned nan"):
        autotune(MODEL, TuningConfig([StaticQuantConfig()]), lambda m: float("nan"), CALIB)
    with pytest.raises(ConfigError, match="eval_fn must be callable"):
        autotune(MODEL, TuningConfig([StaticQuantConfig()]), 0.99, CALIB)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"TuningConfig.tolerable_loss=1.5: expected a fraction in \[0, 1\)"):
        TuningConfig([StaticQuantConfig()], tolerable_loss=1.5)
    with pytest.raises(ConfigError, match=r"TuningConfig\.policy='fastest'"):
        TuningConfig([StaticQuantConfig()], policy="fastest")
    with pytest.raises(ConfigError, match=r"act_algo=\['kl', 'minmax'\].*pass it to autotune"):
        from quantir.compiler import quantize

        quantize(MODEL, StaticQuantConfig(act_algo=["kl", "minmax"]), CALIB)
    with pytest.raises(ConfigError, match=r"StaticQuantConfig\.act_algo='fast'"):
        StaticQuantConfig(act_algo=["kl", "fast"])
