"""Quantization as IPEX's converted models spell it (ipex-and-pt2e.md §1): `quantize_per_tensor` -> `dequantize`
on quantized activations (quint8 asymmetric by default) and `quantize_per_channel` (qint8, axis 0) -> `dequantize`
on weights, which `torch.jit.freeze` folds into QInt8 constants. IPEX's JIT (oneDNN Graph) fuses
`dequantize(x), dequantize(w) -> conv/linear (-> relu) -> quantize` into one `ipex::LlgaFusionGroup`."""

from __future__ import annotations

import numpy as np
import torch

from quantir.ir import DType, GranularityKind, QuantType
from quantir.ir.quant_math import fake_quantize

__all__ = ["IpexFlavor"]


class IpexFlavor:
    name = "ipex"

    def activation(self, x: torch.Tensor, q: QuantType) -> torch.Tensor:
        s, zp = float(q.scale.reshape(-1)[0]), int(q.zero_point.reshape(-1)[0])
        dtype = torch.quint8 if q.dtype is DType.U8 else torch.qint8
        if (q.qmin, q.qmax) != q.dtype.int_range:  # a narrow range: quantized tensors always saturate at the dtype's
            x = torch.clamp(x, (q.qmin - zp) * s, (q.qmax - zp) * s)
        return torch.quantize_per_tensor(x, s, zp, dtype).dequantize()

    def store_weight(self, w: np.ndarray, q: QuantType) -> torch.Tensor:
        # the IR's weight values exactly (k * scale): quantize_per_channel at the same scales gives back k
        return torch.from_numpy(np.array(fake_quantize(w, q), dtype=np.float32, copy=True))

    def weight(self, stored: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, q: QuantType) -> torch.Tensor:
        if q.granularity.kind is GranularityKind.PER_CHANNEL:
            return torch.quantize_per_channel(stored, scale.to(torch.float64), zero_point, 0, torch.qint8).dequantize()
        s, zp = float(q.scale.reshape(-1)[0]), int(q.zero_point.reshape(-1)[0])
        return torch.quantize_per_tensor(stored, s, zp, torch.qint8).dequantize()
