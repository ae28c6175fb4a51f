"""quantir.backends.onnx_qdq: QuantizeLinear/DequantizeLinear ONNX models that ONNX Runtime's CPU EP fuses.

`legalize_for_onnx_qdq` keeps only what ORT runs as integer kernels, `emit` writes the artifact folder, and
`verify_onnx_qdq` loads it in ORT and reports what really runs in 8 bits.
"""

from __future__ import annotations

from quantir.backends.onnx_proto.qdq import lower_to_qdq
from quantir.backends.onnx_qdq.emit import emit
from quantir.backends.onnx_qdq.legalize import LegalizeReport, legalize_for_onnx_qdq
from quantir.backends.onnx_qdq.verify import VerifyReport, verify_onnx_qdq

__all__ = ["LegalizeReport", "VerifyReport", "emit", "legalize_for_onnx_qdq", "lower_to_qdq", "verify_onnx_qdq"]
