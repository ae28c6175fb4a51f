"""What Inductor (torch.compile with freezing) runs in int8 from a PT2E program: see torch_codegen.capabilities."""

from __future__ import annotations

from quantir.backends.torch_codegen.capabilities import table

__all__ = ["KERNELS", "RUNTIME", "TABLE"]

RUNTIME = "torch.compile (Inductor, freezing) on CPU"
KERNELS = {"Conv": "onednn.qconv_pointwise", "Gemm": "onednn.qlinear_pointwise", "MatMul": "onednn.qlinear_pointwise"}
"""IR op -> the oneDNN int8 op Inductor's freezing passes lower the quantized pattern to."""

TABLE = table(RUNTIME, KERNELS["Conv"], KERNELS["Gemm"])
