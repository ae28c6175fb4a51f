"""`TuningResult`: what a tuning run did and found: every trial, the goal and whether it was met, the per-op
sensitivity, the ops kept float by tuning with their gains, and the time spent (per trial and against one full
conversion). `QuantizedModel.tuning` holds it; `summary()` is the JSON the report and the CLI read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quantir.compiler.tuning.objective import Objective
from quantir.compiler.tuning.sensitivity import OpSensitivity
from quantir.compiler.tuning.trials import TrialRecord

__all__ = ["TuningResult"]


@dataclass(slots=True)
class TuningResult:
    objective: Objective
    policy: str
    trials: list[TrialRecord] = field(default_factory=list)
    best: TrialRecord | None = None
    stopped_by: str = "config set exhausted"
    error: str | None = None
    """The eval_fn error that stopped tuning, naming its trial (the best model so far is kept)."""
    sensitivity: list[OpSensitivity] = field(default_factory=list)
    gains: dict[str, float] = field(default_factory=dict)
    """eval_fn gain of each candidate op kept float alone (the re-ranking of the fallback phase)."""
    fallback_gains: dict[str, float] = field(default_factory=dict)
    """For each op the best trial keeps float by tuning: its gain when it was added to the fallback set."""
    fallback_note: str | None = None
    """Why no fallback phase ran, when the goal was not met."""
    wall_seconds: float = 0.0
    prepare_seconds: float = 0.0
    calibration_seconds: float = 0.0
    baseline_seconds: float = 0.0

    @property
    def baseline(self) -> float:
        return self.objective.baseline

    @property
    def goal(self) -> float:
        return self.objective.goal

    @property
    def goal_met(self) -> bool:
        return self.best is not None and self.best.passed

    @property
    def best_result(self) -> float | None:
        return None if self.best is None else self.best.result

    @property
    def seconds_per_trial(self) -> float:
        done = [t for t in self.trials if t.result is not None or t.error]
        return sum(t.seconds for t in done) / len(done) if done else 0.0

    @property
    def convert_seconds_per_trial(self) -> float:
        """The conversion part of a trial (eval_fn excluded): what reusing the calibration saves is measured here."""
        return sum(t.convert_seconds for t in self.trials) / len(self.trials) if self.trials else 0.0

    @property
    def conversion_seconds(self) -> float:
        """One full conversion: import and canonicalize, calibrate, convert (the mean trial conversion)."""
        return self.prepare_seconds + self.calibration_seconds + self.convert_seconds_per_trial

    def summary(self) -> dict[str, Any]:
        best = self.best
        return {
            "criterion": self.objective.criterion, "tolerable_loss": self.objective.tolerable_loss,
            "higher_is_better": self.objective.higher_is_better, "policy": self.policy,
            "baseline": self.baseline, "goal": self.goal, "goal_met": self.goal_met,
            "best_trial": None if best is None else best.index, "best_result": self.best_result,
            "best_config": None if best is None else best.description,
            "fallback_ops": dict(self.fallback_gains), "stopped_by": self.stopped_by, "error": self.error,
            "fallback_note": self.fallback_note,
            "wall_seconds": self.wall_seconds, "prepare_seconds": self.prepare_seconds,
            "calibration_seconds": self.calibration_seconds, "baseline_seconds": self.baseline_seconds,
            "conversion_seconds": self.conversion_seconds, "seconds_per_trial": self.seconds_per_trial,
            "convert_seconds_per_trial": self.convert_seconds_per_trial,
            "trials": [t.to_json() for t in self.trials],
            "sensitivity": [{**s.to_json(), "gain": self.gains.get(s.op)} for s in self.sensitivity],
        }  # fmt: skip

    def table(self) -> str:
        """The trials as a text table, then the outcome."""
        lines = [f"{'trial':>5}  {'phase':<11}  {'result':>10}  {'seconds':>7}  config"]
        for t in self.trials:
            value = "error" if t.result is None else f"{t.result:.6g}"
            mark = " *" if t.passed else ""
            lines.append(f"{t.index:>5}  {t.phase:<11}  {value:>10}  {t.seconds:>7.2f}  {t.description}{mark}")
        lines.append(self.outcome())
        return "\n".join(lines)

    def outcome(self) -> str:
        if self.best is None:
            return f"no trial produced a model ({self.stopped_by}): {self.error or 'see the trials'}"
        met = "goal met" if self.goal_met else "goal NOT met"
        text = (f"{met}: trial {self.best.index} {self.best_result:.6g} vs goal {self.goal:.6g} (baseline "
                f"{self.baseline:.6g}); stopped by {self.stopped_by}; {len(self.trials)} trials in "
                f"{self.wall_seconds:.1f}s, {self.seconds_per_trial:.3f}s per trial (conversion "
                f"{self.convert_seconds_per_trial:.3f}s, the rest eval_fn) vs {self.conversion_seconds:.3f}s for one "
                "full conversion")  # fmt: skip
        if self.fallback_gains:
            text += f"; kept float by tuning: {', '.join(self.fallback_gains)}"
        return text
