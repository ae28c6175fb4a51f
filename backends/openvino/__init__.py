"""quantir.backends.openvino: OpenVINO IR (`.xml`/`.bin`) whose Conv/MatMul run int8 on the CPU plugin.

`legalize_for_openvino` keeps only what the CPU plugin's LPT runs in int8, `emit` builds the model with OpenVINO's
ONNX frontend from the shared QDQ lowering and writes the artifact folder, and `verify_openvino` compiles it on CPU
and reports each quantized node's runtime kernel and the int8 coverage.
"""

from __future__ import annotations

from quantir.backends.openvino.emit import emit
from quantir.backends.openvino.legalize import LegalizeReport, OpRow, legalize_for_openvino
from quantir.backends.openvino.verify import OVVerifyReport, verify_openvino

__all__ = ["LegalizeReport", "OVVerifyReport", "OpRow", "emit", "legalize_for_openvino", "verify_openvino"]
