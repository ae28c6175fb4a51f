"""`TuningConfig`: INC 3.x's accuracy-driven tuning settings (`config_set`, `max_trials`, `tolerable_loss`) and
what INC lacks: a timeout, an absolute criterion, lower-is-better metrics, a best-within-budget policy, the
sensitivity-ranked fallback INC 2.x's "basic" strategy had, and parallel trials. `autotune` uses it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from quantir.ir import ConfigError

__all__ = ["TuningConfig"]

_EXECUTORS = ("sequential", "process", "ray")


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(v: object, lo: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


@dataclass(slots=True)
class TuningConfig:
    """INC fields: the configs to try (`config_set`, list-valued fields expand), at most `max_trials` trials, until
    the metric is within `tolerable_loss` of the float model's (`criterion="relative"`: a fraction of it, INC's rule;
    "absolute": in the metric's units).

    Beyond INC: `timeout` seconds (0: none; no trial starts after it); `higher_is_better=False` for losses or error
    rates; `policy="best"` evaluates every trial within the budget and keeps the best one (INC's is "first": stop at
    the first trial that meets the goal). When no config meets the goal, `fallback=True` ranks the quantized ops by
    the SQNR they lose (one calibration), re-ranks the `sensitivity_candidates` worst by `eval_fn` with each alone in
    float, then keeps ops float cumulatively in that order until the goal is met (at most `max_fallback_ops`;
    None: no limit). `executor` runs trials in this process ("sequential"), a local process pool ("process") or on
    Ray ("ray", `ray_address`: an existing cluster, None: a local one), `workers` at a time (None: one per core)."""

    config_set: list[Any] = field(default_factory=list)
    max_trials: int = 100
    tolerable_loss: float = 0.01
    timeout: float = 0.0
    criterion: str = "relative"
    higher_is_better: bool = True
    policy: str = "first"
    fallback: bool = True
    sensitivity_candidates: int = 8
    max_fallback_ops: int | None = None
    sensitivity_samples: int = 32
    """Calibration samples kept for the per-op SQNR of the fallback phase."""
    executor: str = "sequential"
    workers: int | None = None
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.config_set, list):
            self.config_set = [self.config_set]
        checks: list[tuple[str, bool, str]] = [
            ("max_trials", _count(self.max_trials, 1), "an int >= 1"),
            ("criterion", self.criterion in ("relative", "absolute"), "'relative' or 'absolute'"),
            ("timeout", _number(self.timeout) and self.timeout >= 0, "seconds >= 0 (0: no timeout)"),
            ("higher_is_better", isinstance(self.higher_is_better, bool), "True or False"),
            ("policy", self.policy in ("first", "best"), "'first' (stop at the first trial meeting the goal) or "
                                                         "'best' (the best trial within the budget)"),
            ("fallback", isinstance(self.fallback, bool), "True or False"),
            ("sensitivity_candidates", _count(self.sensitivity_candidates, 0), "an int >= 0"),
            ("max_fallback_ops", self.max_fallback_ops is None or _count(self.max_fallback_ops, 1),
             "None or an int >= 1"),
            ("sensitivity_samples", _count(self.sensitivity_samples, 1), "an int >= 1"),
            ("executor", self.executor in _EXECUTORS, "one of " + ", ".join(_EXECUTORS)),
            ("workers", self.workers is None or _count(self.workers, 1), "None or an int >= 1"),
            ("ray_address", self.ray_address is None or isinstance(self.ray_address, str), "None or a string"),
        ]  # fmt: skip
        relative = self.criterion == "relative"
        loss_ok = (
            _number(self.tolerable_loss) and self.tolerable_loss >= 0 and (not relative or self.tolerable_loss < 1)
        )
        checks.insert(1, ("tolerable_loss", loss_ok, "a fraction in [0, 1)" if relative
                          else "a margin >= 0 in the metric's units"))  # fmt: skip
        for name, ok, expect in checks:
            if not ok:
                raise ConfigError(f"TuningConfig.{name}={getattr(self, name)!r}: expected {expect}")
