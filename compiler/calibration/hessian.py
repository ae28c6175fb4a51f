"""`HessianObserver`: the GPTQ Hessian of one layer input, H = 2/n · Σ xᵀx over every row x (the last axis is the
layer's input channels), accumulated batch by batch in float64. Memory is K² per observed input, never the samples.
"""

from __future__ import annotations

import numpy as np

from quantir.ir import CalibrationError

__all__ = ["HessianObserver"]


class HessianObserver:
    """Streams the input rows of a MatMul/Gemm into Σ xᵀx and a row count."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.xtx: np.ndarray | None = None
        self.rows = 0

    def update(self, x: np.ndarray) -> None:
        data = np.asarray(x)
        if data.ndim == 0 or not np.issubdtype(data.dtype, np.floating):
            raise CalibrationError(f"%{self.name}: a Hessian needs float rows, got {data.dtype} {data.shape}")
        rows = data.reshape(-1, data.shape[-1]).astype(np.float64)
        if not np.all(np.isfinite(rows)):
            raise CalibrationError(f"%{self.name} has NaN or Inf values: its Hessian (GPTQ) cannot be computed")
        if self.xtx is None:
            self.xtx = np.zeros((rows.shape[1], rows.shape[1]), dtype=np.float64)
        elif self.xtx.shape[0] != rows.shape[1]:
            raise CalibrationError(f"%{self.name}: {rows.shape[1]} channels after {self.xtx.shape[0]}")
        self.xtx += rows.T @ rows
        self.rows += rows.shape[0]

    def hessian(self) -> np.ndarray:
        if self.xtx is None or self.rows == 0:
            raise CalibrationError(f"%{self.name}: no calibration rows reached this layer, so GPTQ has no Hessian")
        return self.xtx * (2.0 / self.rows)
