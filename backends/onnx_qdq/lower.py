"""The QDQ lowering lives in `quantir.backends.onnx_proto.qdq` (shared with the openvino backend); re-exported here.

For onnx_qdq the `Max(x, x)` guard before float Conv/Gemm reading a DequantizeLinear is on (the default), since ORT's
WeightBiasQuantization would otherwise quantize a user's float fallback.
"""

from __future__ import annotations

from quantir.backends.onnx_proto.qdq import lower_to_qdq, node_names, require_calibrated

__all__ = ["lower_to_qdq", "node_names", "require_calibrated"]
