"""What IPEX's JIT fuses into int8 (oneDNN Graph) from a converted TorchScript model: see torch_codegen.capabilities."""

from __future__ import annotations

from quantir.backends.torch_codegen.capabilities import table

__all__ = ["KERNELS", "RUNTIME", "TABLE"]

RUNTIME = "TorchScript (IPEX int8 patterns)"
KERNELS = {"Conv": "LlgaFusionGroup(quantized conv)", "Gemm": "LlgaFusionGroup(quantized linear)",
           "MatMul": "LlgaFusionGroup(quantized linear)"}  # fmt: skip
"""IR op -> what IPEX's JIT fuses the quantized pattern into (ipex-and-pt2e.md §1)."""

TABLE = table(RUNTIME, KERNELS["Conv"], KERNELS["Gemm"])
