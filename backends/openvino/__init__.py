"""quantir.backends.openvino: OpenVINO IR (`.xml`/`.bin`) whose Conv/MatMul run int8 on the CPU plugin.

`legalize_for_openvino` keeps only what the CPU plugin's LPT runs in int8, `emit` builds the model with OpenVINO's
ONNX frontend from the shared QDQ lowering and writes the artifact folder, and `verify_openvino` compiles it on CPU
and reports each quantized node's runtime kernel and the int8 coverage. `emit` and `verify_openvino` import the
`openvino` package (about 0.2 s), so they are loaded on first use, not with this package.
"""

from __future__ import annotations

import importlib
from typing import Any

from quantir.backends.openvino.legalize import LegalizeReport, legalize_for_openvino

__all__ = ["LegalizeReport", "legalize_for_openvino", "verify_openvino"]

# `emit` is imported from its module (`quantir.backends.openvino.emit.emit`): as a package attribute the name would
# clash with the submodule of the same name.
_LAZY = {
    "verify_openvino": "quantir.backends.openvino.verify",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
