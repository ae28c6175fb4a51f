"""The opt-in INC lane (marker `inc`; run by `tools/dev/inc_lane.sh` in a venv with neural-compressor-pt 3.10): real
INC's `load(dir, format="huggingface", device="cpu", original_model=...)` reads quantir's checkpoint (config.json's
`quantization_config`, the safetensors keys), patches the user's digits CNN (PatchedConv2d / PatchedLinear in QDQ
mode, INC's only FP8 mode on CPU) and runs it. With hp_dtype fp32 its outputs equal quantir's CPU emulation to float
rounding; with bf16 INC computes the whole model in bf16. Skipped everywhere else."""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.inc

pytest.importorskip("neural_compressor.torch.quantization")
ARTIFACTS = os.environ.get("QUANTIR_INC_ARTIFACTS")
if not ARTIFACTS:
    pytest.skip("QUANTIR_INC_ARTIFACTS is not set (run tools/dev/inc_lane.sh)", allow_module_level=True)


def _inc_load(name: str) -> object:
    from neural_compressor.torch.quantization import load

    from quantir.tools.dev.train_digits import load_bundled_module

    folder = Path(ARTIFACTS) / name  # type: ignore[arg-type]
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    model = load_bundled_module()
    model.config = types.SimpleNamespace()  # not a transformers model: INC takes quantization_config from kwargs
    return load(str(folder), format="huggingface", device="cpu", original_model=model, quantization_config=qc)


@pytest.mark.parametrize(("name", "max_rel"), [("fp32", 1e-6), ("gaudi3_pow2", 1e-6), ("bf16", 0.06)])
def test_real_inc_loads_the_checkpoint_and_matches_the_emulation(name: str, max_rel: float) -> None:
    import torch

    model = _inc_load(name)
    kinds = {n: type(m).__name__ for n, m in model.named_modules() if n in ("conv1", "conv2", "fc1", "fc2")}  # type: ignore[attr-defined]
    assert kinds == {"conv1": "PatchedConv2d", "conv2": "PatchedConv2d", "fc1": "PatchedLinear", "fc2": "PatchedLinear"}
    root = Path(ARTIFACTS)  # type: ignore[arg-type]
    with torch.no_grad():
        theirs = model(torch.from_numpy(np.load(root / "x.npy"))).float().numpy()  # type: ignore[operator]
    ours = np.load(root / name / "ours.npy")
    rel = float(np.abs(theirs - ours).max() / np.abs(ours).max())
    print(f"INC {name}: max relative difference from quantir's emulation {rel:.3g}")
    assert rel <= max_rel and np.mean(theirs.argmax(1) == ours.argmax(1)) == 1.0


def test_inc_refuses_the_gaudi_default_on_cpu_as_documented() -> None:
    with pytest.raises(ValueError, match="only QDQ mode is supported on CPU"):
        _inc_load("gaudi_default")
