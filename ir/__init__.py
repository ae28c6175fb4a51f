"""quantir.ir: the IR core (types, graph, text form, verifier). Imports only numpy, lark and the stdlib."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quantir.ir.core import Attr, AttrKind, Graph, Node, SourceInfo, Usage, Value
from quantir.ir.dtypes import DType
from quantir.ir.equality import first_difference, structurally_equal
from quantir.ir.errors import (
    CalibrationError,
    ConfigError,
    FrontendError,
    IRError,
    ParseError,
    PassError,
    QuantirError,
    RuntimeCrashError,
    SerializationError,
    UnsupportedOpError,
    UseListError,
    VerifyError,
)
from quantir.ir.printer import format_context, print_graph
from quantir.ir.tensor import ExternalData, Tensor
from quantir.ir.textio import load, save
from quantir.ir.traits import OpTraits, traits_of, weight_inputs
from quantir.ir.types import (
    Granularity,
    GranularityKind,
    OptionalType,
    QuantSpec,
    QuantType,
    Scheme,
    SequenceType,
    TensorType,
)
from quantir.ir.verify import verify

if TYPE_CHECKING:
    from quantir.ir.parser import parse

_LAZY = {"parse": "quantir.ir.parser"}
"""The text reader loads lark (~50 ms of imports); compilation never needs it, so it is imported on first use."""


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'quantir.ir' has no attribute {name!r}")


__all__ = [
    "Attr", "AttrKind", "ConfigError", "DType", "ExternalData", "FrontendError", "Graph", "Granularity",
    "GranularityKind", "IRError", "Node", "OpTraits", "OptionalType", "ParseError", "PassError", "QuantSpec",
    "QuantType", "QuantirError", "Scheme", "SequenceType", "SerializationError", "SourceInfo", "Tensor",
    "TensorType", "UnsupportedOpError", "Usage", "UseListError", "Value", "VerifyError", "first_difference",
    "structurally_equal", "traits_of", "verify", "weight_inputs", "parse", "print_graph", "format_context", "save",
    "load", "CalibrationError", "RuntimeCrashError",
]  # fmt: skip
