"""The exit policy's arithmetic: the goal a trial's metric must reach (INC's relative rule, or an absolute margin;
higher or lower is better) and the check that an `eval_fn` result is a finite number."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal

from quantir.ir import QuantirError

__all__ = ["Criterion", "EvalResultError", "Objective", "as_metric"]

Criterion = Literal["relative", "absolute"]


class EvalResultError(QuantirError):
    """`eval_fn` raised, or returned something that is not a finite number."""


def as_metric(value: object, where: str) -> float:
    """`value` as a float, or EvalResultError naming `where` (e.g. "eval_fn on trial 3 (act_sym=True)")."""
    item = getattr(value, "item", None)  # numpy and torch scalars
    if callable(item) and getattr(value, "shape", ()) in ((), (1,), [1]):
        value = item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise EvalResultError(f"{where} returned {type(value).__name__} {value!r}: eval_fn must return one number "
                              "(e.g. an accuracy), higher is better unless higher_is_better=False")  # fmt: skip
    number = float(value)
    if not math.isfinite(number):
        raise EvalResultError(f"{where} returned {number!r}: eval_fn must return a finite number")
    return number


@dataclass(frozen=True, slots=True)
class Objective:
    """The goal derived from the float model's metric. Relative (INC's rule): higher-is-better results must reach
    baseline - |baseline|·loss (INC writes baseline·(1 - loss), the same for a non-negative baseline), lower-is-
    better ones stay under baseline + |baseline|·loss. Absolute: the margin is `tolerable_loss` itself."""

    baseline: float
    tolerable_loss: float
    criterion: Criterion = "relative"
    higher_is_better: bool = True

    @property
    def margin(self) -> float:
        return self.tolerable_loss * (abs(self.baseline) if self.criterion == "relative" else 1.0)

    @property
    def goal(self) -> float:
        return self.baseline - self.margin if self.higher_is_better else self.baseline + self.margin

    def meets(self, result: float) -> bool:
        return result >= self.goal if self.higher_is_better else result <= self.goal

    def better(self, a: float, b: float) -> bool:
        """`a` is strictly better than `b`."""
        return a > b if self.higher_is_better else a < b

    def gain(self, after: float, before: float) -> float:
        """How much `after` improves on `before` (positive: better), in the metric's units."""
        return after - before if self.higher_is_better else before - after
