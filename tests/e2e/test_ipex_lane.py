"""The opt-in IPEX lane (marker `ipex`; run by `tools/dev/ipex_lane.sh` in a torch 2.8 + IPEX 2.8 venv): real
IPEX prepares the user's own digits CNN, loads quantir's `qconf.json` with `load_qconf_summary`, converts, traces
and freezes, and after two warm-up calls runs oneDNN Graph int8 (`ipex::LlgaFusionGroup`) agreeing with quantir's
TorchScript artifact. Skipped everywhere else (no IPEX, or no artifacts written by step 1)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.ipex

ipex = pytest.importorskip("intel_extension_for_pytorch")
ARTIFACTS = os.environ.get("QUANTIR_IPEX_ARTIFACTS")
if not ARTIFACTS:
    pytest.skip("QUANTIR_IPEX_ARTIFACTS is not set (run tools/dev/ipex_lane.sh)", allow_module_level=True)


@pytest.mark.parametrize("variant", ["default", "fc1_fp32"])
def test_real_ipex_loads_quantir_qconf_and_runs_int8(variant: str) -> None:
    import torch
    from intel_extension_for_pytorch.quantization import convert, prepare

    from quantir.tools.dev.train_digits import load_bundled_module

    root = Path(ARTIFACTS)  # type: ignore[arg-type]
    x = torch.from_numpy(np.load(root / "x.npy"))
    prepared = prepare(load_bundled_module().eval(), ipex.quantization.default_static_qconfig_mapping,
                       example_inputs=x[:8], inplace=False)  # fmt: skip
    prepared.load_qconf_summary(qconf_summary=os.fspath(root / variant / "qconf.json"))
    with torch.no_grad():
        model = torch.jit.freeze(torch.jit.trace(convert(prepared), x[:8]).eval())
        model(x), model(x)
        graph = str(model.graph_for(x))
        out = model(x).numpy()
    groups = graph.count("LlgaFusionGroup")
    ours = np.load(root / variant / "ours.npy")
    print(f"\n{variant}: {groups} LlgaFusionGroup(s); max |IPEX - quantir TorchScript| {np.abs(out - ours).max():.3g}; "
          f"argmax agreement {np.mean(out.argmax(1) == ours.argmax(1)):.3f}")  # fmt: skip
    assert groups >= 1
    assert np.mean(out.argmax(1) == ours.argmax(1)) >= 0.98
