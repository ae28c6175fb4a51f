"""The bundled example's data: scikit-learn's digits images (real 8x8 scans), with a fixed split.

Images are scaled to [0, 1] as float32 NCHW; the split is seeded so every run sees the same held-out set.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = ["DigitsSplit", "bundled_model_path", "load_digits_split"]


@dataclass(frozen=True, slots=True)
class DigitsSplit:
    train_x: np.ndarray
    train_y: np.ndarray
    calib_x: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def load_digits_split(seed: int = 0) -> DigitsSplit:
    """1,797 images: 1,200 train (of which the first 256 are the calibration set) and 597 held out."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise RuntimeError("the digits example needs scikit-learn: pip install 'quantir[example]'") from e
    data = load_digits()
    x = (data.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    return DigitsSplit(train_x=x[:1200], train_y=y[:1200], calib_x=x[:256], test_x=x[1200:], test_y=y[1200:])


def bundled_model_path() -> Path:
    """The digits CNN shipped with quantir (trained by tools/dev/train_digits.py)."""
    return Path(str(resources.files("quantir.tools") / "data" / "digits_cnn.onnx"))
