"""Accuracy-driven tuning (INC 3.x `autotune`). Not built yet: `autotune` raises `NotImplementedError` saying so."""

from __future__ import annotations

from typing import Any

__all__ = ["autotune"]


def autotune(model: Any, tune_config: Any, eval_fn: Any = None, *args: Any, **kwargs: Any) -> Any:
    """INC's `autotune(model, tune_config, eval_fn, ...)`: not implemented in quantir yet."""
    raise NotImplementedError(
        "quantir.compiler.autotune (accuracy-driven tuning over a TuningConfig's config_set) is not implemented yet; "
        "quantize with one StaticQuantConfig, and use `quantir layers` to find the layers to keep float with set_local"
    )
