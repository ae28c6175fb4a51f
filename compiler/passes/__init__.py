"""One compiler pass per module; importing this package registers them all in `PASSES` for string pipelines
(`parse_pipeline(text, builtin_registry())`)."""

from __future__ import annotations

from quantir.compiler.pass_manager import PASSES, PassRegistry
from quantir.compiler.passes.annotate import Annotate
from quantir.compiler.passes.calibrate import Calibrate
from quantir.compiler.passes.canonicalize import Canonicalize
from quantir.compiler.passes.compute_qparams import ComputeQParams
from quantir.compiler.passes.eliminate_dead_code import EliminateDeadCode
from quantir.compiler.passes.fold_constants import FoldConstants
from quantir.compiler.passes.legalize import Legalize
from quantir.compiler.passes.smooth_quant import SmoothQuant
from quantir.compiler.passes.unify_shared_ranges import UnifySharedRanges
from quantir.compiler.passes.weight_only_awq import WeightOnlyAWQ
from quantir.compiler.passes.weight_only_gptq import WeightOnlyGPTQ
from quantir.compiler.passes.weight_only_rtn import WeightOnlyRTN

__all__ = [
    "builtin_registry",
    "Annotate",
    "Calibrate",
    "Canonicalize",
    "ComputeQParams",
    "EliminateDeadCode",
    "FoldConstants",
    "Legalize",
    "SmoothQuant",
    "UnifySharedRanges",
    "WeightOnlyAWQ",
    "WeightOnlyGPTQ",
    "WeightOnlyRTN",
]


def builtin_registry() -> PassRegistry:
    """The registry holding every built-in pass (all are registered by importing this package)."""
    return PASSES
