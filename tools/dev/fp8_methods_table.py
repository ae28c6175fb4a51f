"""Accuracy of every static INC FP8 scale method, Gaudi2 and Gaudi3 scale sets, emulated on the CPU: the digits CNN
(held-out top-1 against FP32) and all-MiniLM-L6-v2 (embedding cosine against FP32). Each model is prepared and
calibrated once; every method is one `convert` and one `gaudi_fp8` checkpoint run by its CPU emulation.

    python -m quantir.tools.dev.fp8_methods_table [--models digits minilm]
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from quantir.backends.registry import get_backend
from quantir.compiler.api import convert, prepare
from quantir.compiler.config.quant_config import FP8_DEVICES, FP8Config
from quantir.compiler.qparams.fp8_methods import SCALE_METHODS
from quantir.ir import ConfigError


def _digits() -> tuple[Any, Callable[[Any], float], str]:
    import torch

    from quantir.tools.dev.train_digits import load_bundled_module
    from quantir.tools.digits import load_digits_split

    d = load_digits_split()
    module = load_bundled_module()
    prepared = prepare(module, FP8Config(), example_inputs=(torch.zeros(8, 1, 8, 8),), backend="gaudi_fp8")
    prepared(torch.from_numpy(d.calib_x))
    with torch.no_grad():
        fp32 = float((module(torch.from_numpy(d.test_x)).argmax(1).numpy() == d.test_y).mean())

    def score(runner: Any) -> float:
        return float(np.mean(runner({"x": d.test_x})[0].argmax(1) == d.test_y))

    return prepared, score, f"top-1 (FP32 {fp32:.2%})"


def _minilm() -> tuple[Any, Callable[[Any], float], str]:
    import torch

    from quantir.tools.minilm import batches, load_sentences, load_torch_model, mean_cosine

    model = load_torch_model()
    sentences = load_sentences()
    calib, held = sentences[:64], sentences[100:][:48]
    example = {k: torch.from_numpy(v) for k, v in batches(calib[:2], 2)[0].items()}
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=512)
    prepared = prepare(model, FP8Config(), example_inputs=example, backend="gaudi_fp8",
                       dynamic_shapes={k: {0: batch, 1: seq} for k in example})  # fmt: skip
    for feed in batches(calib, 16):
        prepared(**{k: torch.from_numpy(v) for k, v in feed.items()})
    feeds = batches(held, 16)
    with torch.no_grad():
        ref = np.concatenate([model(**{k: torch.from_numpy(v) for k, v in f.items()}).numpy() for f in feeds])

    def score(runner: Any) -> float:
        return mean_cosine(np.concatenate([runner(f)[0] for f in feeds]), ref)

    return prepared, score, "embedding cosine vs FP32"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=["digits", "minilm"], choices=["digits", "minilm"])
    args = ap.parse_args(argv)
    backend = get_backend("gaudi_fp8")
    for name in args.models:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared, score, metric = {"digits": _digits, "minilm": _minilm}[name]()
        print(f"{name}: {metric}, E4M3, emulated on CPU (torch float8 casts)")
        print(f"  {'scale_method':42s} " + " ".join(f"{d:>8s}" for d in FP8_DEVICES))
        for method in SCALE_METHODS:
            cells = []
            for device in FP8_DEVICES:
                try:
                    q = convert(prepared, FP8Config(scale_method=method, device_for_scales=device))
                except ConfigError as e:
                    cells.append("refused")
                    print(f"    ({method} on {device}: {e})")
                    continue
                with tempfile.TemporaryDirectory() as tmp:
                    runner = backend.load(q.save(Path(tmp) / "ckpt", backend="gaudi_fp8"))
                    value = score(runner)
                cells.append(f"{value:.2%}" if name == "digits" else f"{value:.5f}")
            print(f"  {method:42s} " + " ".join(f"{c:>8s}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
