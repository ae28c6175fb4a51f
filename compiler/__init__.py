"""quantir.compiler: the INC 3.x-style API and the passes behind it.

`from quantir.compiler import StaticQuantConfig, RTNConfig, DynamicQuantConfig, FP8Config, TuningConfig, prepare,
convert, quantize, autotune`. Names load on first use (PEP 562), so importing the package costs nothing and cannot
form an import cycle.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from quantir.compiler.api import PreparedModel, convert, prepare, quantize
    from quantir.compiler.config import (
        AWQConfig,
        DynamicQuantConfig,
        FP8Config,
        GPTQConfig,
        RTNConfig,
        StaticQuantConfig,
        TuningConfig,
    )
    from quantir.compiler.quantized_model import QuantizedModel
    from quantir.compiler.tuning import autotune

__all__ = [
    "AWQConfig", "DynamicQuantConfig", "FP8Config", "GPTQConfig", "PreparedModel", "QuantizedModel", "RTNConfig",
    "StaticQuantConfig",
    "TuningConfig", "autotune", "convert", "prepare", "quantize",
]  # fmt: skip

_PUBLIC = {
    "prepare": "quantir.compiler.api", "convert": "quantir.compiler.api", "quantize": "quantir.compiler.api",
    "PreparedModel": "quantir.compiler.api", "QuantizedModel": "quantir.compiler.quantized_model",
    "StaticQuantConfig": "quantir.compiler.config", "RTNConfig": "quantir.compiler.config",
    "DynamicQuantConfig": "quantir.compiler.config", "GPTQConfig": "quantir.compiler.config",
    "AWQConfig": "quantir.compiler.config",
    "FP8Config": "quantir.compiler.config", "TuningConfig": "quantir.compiler.config",
    "autotune": "quantir.compiler.tuning",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'quantir.compiler' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
