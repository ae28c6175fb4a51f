"""The peer baseline: onnxruntime's own `quantize_static` (QDQ, u8 activations, s8 weights, MinMax), called in one
place for the benchmark and the retargeting tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np

__all__ = ["ort_quantize_digits", "ort_quantize_static"]


def ort_quantize_static(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    batches: Iterable[dict[str, np.ndarray]],
    *,
    per_channel: bool = True,
    reduce_range: bool = False,
) -> None:
    """Quantize `model` to `out` with ORT's tool on the feed dicts `batches` (consumed once)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no type information
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    quantize_static(
        os.fspath(model), os.fspath(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=reduce_range,
        calibrate_method=CalibrationMethod.MinMax,
    )  # fmt: skip


def ort_quantize_digits(out: str | os.PathLike[str], *, per_channel: bool = True) -> str | os.PathLike[str]:
    """The bundled digits CNN through ORT's tool, calibrated one image at a time on the 256 calibration images."""
    from quantir.tools.digits import bundled_model_path, load_digits_split

    calib = load_digits_split().calib_x
    ort_quantize_static(bundled_model_path(), out, ({"x": calib[i : i + 1]} for i in range(len(calib))),
                        per_channel=per_channel)  # fmt: skip
    return out
