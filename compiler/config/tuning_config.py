"""`TuningConfig`, INC 3.x's accuracy-driven tuning settings. The config validates; `autotune`, which would use it,
is not built yet (see `quantir.compiler.tuning`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quantir.ir import ConfigError

__all__ = ["TuningConfig"]


@dataclass(slots=True)
class TuningConfig:
    """INC 3.x fields: the configs to try (`config_set`), at most `max_trials` of them, until the metric is within
    `tolerable_loss` (relative) of the float model's."""

    config_set: list[Any] = field(default_factory=list)
    max_trials: int = 100
    tolerable_loss: float = 0.01

    def __post_init__(self) -> None:
        if not isinstance(self.config_set, list):
            self.config_set = [self.config_set]
        if isinstance(self.max_trials, bool) or not isinstance(self.max_trials, int) or self.max_trials < 1:
            raise ConfigError(f"TuningConfig.max_trials must be an int >= 1, got {self.max_trials!r}")
        if isinstance(self.tolerable_loss, bool) or not isinstance(self.tolerable_loss, (int, float)) or not (
            0.0 <= self.tolerable_loss < 1.0
        ):
            raise ConfigError(f"TuningConfig.tolerable_loss must be a fraction in [0, 1), got {self.tolerable_loss!r}")
