"""`HessianObserver`: the GPTQ Hessian of one layer input, H = 2/n · Σ xᵀx over every row x (the last axis is the
layer's input channels), and AWQ's mean |x| per channel, accumulated batch by batch in float64. Memory is K² per
observed input, never the samples.
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
        self.abs_sum: np.ndarray | None = None
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
        absolute = np.abs(rows).sum(axis=0)
        self.abs_sum = absolute if self.abs_sum is None else self.abs_sum + absolute
        self.rows += rows.shape[0]

    def mean_abs(self) -> np.ndarray:
        """Mean |x| per input channel (AWQ's activation statistic)."""
        if self.abs_sum is None or self.rows == 0:
            raise CalibrationError(f"%{self.name}: no calibration rows reached this layer")
        return self.abs_sum / self.rows

    def hessian(self) -> np.ndarray:
        if self.xtx is None or self.rows == 0:
            raise CalibrationError(f"%{self.name}: no calibration rows reached this layer, so GPTQ has no Hessian")
        return self.xtx * (2.0 / self.rows)
