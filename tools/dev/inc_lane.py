"""Step 1 of the opt-in INC lane (`tools/dev/inc_lane.sh`): write quantir's gaudi_fp8 checkpoints of the digits CNN
with this checkout's venv, plus the probe batch and quantir's own CPU emulation of each on it, for
`tests/e2e/test_inc_lane.py` to load with real Intel Neural Compressor (`neural-compressor-pt`).

INC runs FP8 on the CPU only in QDQ mode (`use_qdq=True`; otherwise its `prep_model` raises "For FP8 quantization,
only QDQ mode is supported on CPU device"), so the lane's checkpoints set it; a Gaudi loads the same layout.

    python -m quantir.tools.dev.inc_lane write DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

__all__ = ["VARIANTS", "write"]

VARIANTS: dict[str, dict[str, object]] = {
    "fp32": {"use_qdq": True, "hp_dtype": "fp32"},
    "bf16": {"use_qdq": True},
    "gaudi3_pow2": {"use_qdq": True, "hp_dtype": "fp32", "device_for_scales": "gaudi3", "scale_method": "maxabs_pow2"},
    "gaudi_default": {},
}
"""Checkpoint name -> FP8Config fields (gaudi_default: INC's defaults, which its CPU path refuses)."""


def write(out: Path) -> None:
    import torch

    from quantir.backends.gaudi_fp8.verify import load
    from quantir.compiler import FP8Config, convert, prepare
    from quantir.tools.dev.train_digits import load_bundled_module
    from quantir.tools.digits import load_digits_split

    digits = load_digits_split()
    x = digits.test_x[:64]
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "x.npy", x)
    prepared = prepare(load_bundled_module(), FP8Config(), example_inputs=(torch.zeros(8, 1, 8, 8),),
                       backend="gaudi_fp8")  # fmt: skip
    prepared(torch.from_numpy(digits.calib_x))
    for name, fields in VARIANTS.items():
        artifact = convert(prepared, FP8Config(**fields)).save(out / name, backend="gaudi_fp8")  # type: ignore[arg-type]
        np.save(out / name / "ours.npy", load(artifact)({"x": x})[0])


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "write":
        raise SystemExit("usage: python -m quantir.tools.dev.inc_lane write DIR")
    write(Path(sys.argv[2]))
