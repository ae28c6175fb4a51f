"""Step 1 of the opt-in IPEX lane (`tools/dev/ipex_lane.sh`): write quantir's ipex artifacts of the digits CNN
(default config, and `fc1` fallen back to float) with this checkout's torch, plus the probe batch and each
artifact's outputs on it, for `tests/e2e/test_ipex_lane.py` to load into real IPEX 2.8.

    python -m quantir.tools.dev.ipex_lane write DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

__all__ = ["VARIANTS", "write"]

VARIANTS = ("default", "fc1_fp32")


def write(out: Path) -> None:
    import torch

    from quantir.backends.ipex.verify import load
    from quantir.compiler import StaticQuantConfig, convert, prepare
    from quantir.tools.dev.train_digits import load_bundled_module
    from quantir.tools.digits import load_digits_split

    digits = load_digits_split()
    x = digits.test_x[:64]
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "x.npy", x)
    for variant in VARIANTS:
        cfg = StaticQuantConfig(act_sym=False, act_algo="minmax")
        if variant == "fc1_fp32":
            cfg.set_local("fc1", StaticQuantConfig(w_dtype="fp32", act_dtype="fp32"))
        prepared = prepare(load_bundled_module(), cfg, example_inputs=(torch.zeros(8, 1, 8, 8),), backend="ipex")
        for batch in torch.from_numpy(digits.calib_x).split(32):
            prepared(batch)
        artifact = convert(prepared).save(out / variant, backend="ipex")
        np.save(out / variant / "ours.npy", load(artifact)({"x": x})[0])
        print(f"wrote {artifact}")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "write":
        sys.exit("usage: python -m quantir.tools.dev.ipex_lane write DIR")
    write(Path(sys.argv[2]))
