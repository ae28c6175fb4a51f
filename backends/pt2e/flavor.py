"""Quantization as PT2E writes it (ipex-and-pt2e.md §4): `quantized_decomposed.quantize_per_tensor` ->
`dequantize_per_tensor` with the scale and zero point as literals on activations, and int8 weight tensors read
through `dequantize_per_channel` (scale and zero point tensors, axis 0): what `convert_pt2e` leaves for
X86InductorQuantizer and what Inductor's freezing passes lower to oneDNN int8 kernels."""

from __future__ import annotations

import numpy as np
import torch
import torch.ao.quantization.fx._decomposed  # registers torch.ops.quantized_decomposed

from quantir.ir import DType, GranularityKind, QuantType
from quantir.ir.quant_math import quantize

__all__ = ["Pt2eFlavor"]

_qd = torch.ops.quantized_decomposed


def _dtype(q: QuantType) -> torch.dtype:
    return torch.uint8 if q.dtype is DType.U8 else torch.int8


class Pt2eFlavor:
    name = "pt2e"

    def activation(self, x: torch.Tensor, q: QuantType) -> torch.Tensor:
        s, zp, dt = float(q.scale.reshape(-1)[0]), int(q.zero_point.reshape(-1)[0]), _dtype(q)
        y = _qd.quantize_per_tensor.default(x, s, zp, q.qmin, q.qmax, dt)
        return _qd.dequantize_per_tensor.default(y, s, zp, q.qmin, q.qmax, dt)  # type: ignore[no-any-return]

    def store_weight(self, w: np.ndarray, q: QuantType) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(quantize(w, q)))

    def weight(self, stored: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, q: QuantType) -> torch.Tensor:
        if q.granularity.kind is GranularityKind.PER_CHANNEL:
            return _qd.dequantize_per_channel.default(stored, scale, zero_point, 0, q.qmin, q.qmax, torch.int8)  # type: ignore[no-any-return]
        s, zp = float(q.scale.reshape(-1)[0]), int(q.zero_point.reshape(-1)[0])
        return _qd.dequantize_per_tensor.default(stored, s, zp, q.qmin, q.qmax, torch.int8)  # type: ignore[no-any-return]
