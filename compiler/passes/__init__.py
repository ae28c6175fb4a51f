"""One compiler pass per module; importing this package registers them all for string pipelines."""

from __future__ import annotations

from quantir.compiler.passes.canonicalize import Canonicalize
from quantir.compiler.passes.eliminate_dead_code import EliminateDeadCode

__all__ = ["Canonicalize", "EliminateDeadCode"]
