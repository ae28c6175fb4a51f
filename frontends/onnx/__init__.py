"""quantir.frontends.onnx: import ONNX models (float, lazily loaded external weights) into the quantir IR."""

from __future__ import annotations

from quantir.frontends.onnx.importer import import_onnx

__all__ = ["import_onnx"]
