"""The residual/concat/squeeze-excite class of CNN on OpenVINO (the corpus issue's failing case): a BN-folded stem,
a depthwise conv with ReLU6, a residual Add followed by ReLU, a Concat of two branches, a squeeze-excite gate
(global mean -> Linear -> ReLU -> Linear -> Sigmoid -> Mul) and MaxPool, exported by torch's dynamo exporter
through quantir's torch frontend, calibrated on the digits scans. OpenVINO's frontend may merge or move a
FakeQuantize (here the Concat's shared one): that is checked by what the compiled model runs, not by counting.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from quantir.compiler.api import quantize  # noqa: E402
from quantir.compiler.config.quant_config import StaticQuantConfig  # noqa: E402
from quantir.tools.convert import verify_fresh  # noqa: E402
from quantir.tools.digits import load_digits_split  # noqa: E402


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU6())
        self.pw = nn.Conv2d(16, 16, 1)
        self.left, self.right = nn.Conv2d(16, 8, 1), nn.Conv2d(16, 8, 3, padding=1)
        self.se = nn.Sequential(nn.Linear(16, 4), nn.ReLU(), nn.Linear(4, 16), nn.Sigmoid())
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        r = torch.relu(self.pw(self.dw(s)) + s)
        c = torch.cat([self.left(r), self.right(r)], dim=1)
        gate = self.se(c.mean(dim=(2, 3)))[:, :, None, None]
        return self.head(torch.flatten(self.pool(c * gate), 1))  # type: ignore[no-any-return]


def test_residual_concat_se_cnn_converts_to_openvino_and_runs_int8(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = _Net().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the fold matters
        bn = net.stem[1]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    split = load_digits_split()
    x = split.calib_x.astype(np.float32)
    example = torch.from_numpy(x[:2])
    batches = [torch.from_numpy(x[i : i + 32]) for i in range(0, 128, 32)]
    q = quantize(net, StaticQuantConfig(), batches, backend="openvino", example_inputs=example)
    artifact = q.save(tmp_path / "ov", backend="openvino")
    report = verify_fresh("openvino", artifact, _feed(q, x[:16]))
    print(report.format())
    # The frontend merged FakeQuantize (the Concat's branches share one): a note, not a refused conversion.
    assert any("FakeQuantize for" in n and "runtime check" in n for n in report.notes), report.notes
    assert report.heavy and all(r.int8 for r in report.heavy), [r.name for r in report.missed]
    with torch.no_grad():
        want = net(torch.from_numpy(split.test_x[:64].astype(np.float32))).numpy()
    got = report.run(_feed(q, split.test_x[:64].astype(np.float32)))[0]
    cos = (want * got).sum(1) / (np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1))
    assert float(cos.mean()) > 0.99, float(cos.mean())


def _feed(q: object, x: np.ndarray) -> dict[str, np.ndarray]:
    name = q.ir.inputs[0].name  # type: ignore[attr-defined]
    return {name: x}
