"""quantir.frontends.torch: import PyTorch models (nn.Module + example inputs, or ExportedProgram) into the IR via
torch.export and the dynamo ONNX exporter, keeping module paths and classes as provenance."""

from __future__ import annotations

from quantir.frontends.torch.export import export_program, import_torch, to_onnx

__all__ = ["export_program", "import_torch", "to_onnx"]
