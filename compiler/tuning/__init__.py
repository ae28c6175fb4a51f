"""Accuracy-driven tuning: `autotune` (INC 3.x semantics and the exit policies INC lacks), its trial engine
(sequential, process pool, Ray), the sensitivity-ranked fallback and the `TuningResult` it returns."""

from __future__ import annotations

from quantir.compiler.tuning.autotune import TuningWarning, autotune
from quantir.compiler.tuning.result import TuningResult

__all__ = ["TuningResult", "TuningWarning", "autotune"]
