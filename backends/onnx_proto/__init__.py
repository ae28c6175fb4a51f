"""quantir.backends.onnx_proto: float ONNX emission, the lowering shared by the onnx_qdq backend and calibration."""

from __future__ import annotations

from quantir.backends.onnx_proto.emit import PROTO_LIMIT, build_model, emit_model
from quantir.backends.onnx_proto.runtime import OrtRunner, ort_session, run_all
from quantir.backends.onnx_proto.save import save_model

__all__ = ["PROTO_LIMIT", "OrtRunner", "build_model", "emit_model", "ort_session", "run_all", "save_model"]
